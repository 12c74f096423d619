"""What a model family is, as data: its named configs, how its files are recognised, where they come from.

A family module (``emo_model/families/<name>.py``) builds one :class:`Family` and holds everything that
makes that family itself: its architecture switches and preset (named configs), the quirks of its original
inference code with the file and commit each one mirrors, how its checkpoint files are recognised and
mapped onto :class:`~emo_model.network.model.EMOModel` names, and which original the parity harness runs.
Generic code (loading, the networks, the sampler, the nodes) only reads these fields.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..configs import EMOConfig

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    from ..audio.vocal_separation import SeparatorSettings


@dataclass(frozen=True)
class OriginalCode:
    """The original repository a family's quirks and parity fixtures follow."""

    repo: str  # "owner/name" on GitHub
    commit: str  # the pinned commit (full hash)
    weights: str = ""  # where its published weights are (Hugging Face repository and files)


@dataclass(frozen=True)
class PartFiles:
    """A family published as several files, each holding one part of the model.

    ``parts``: role -> (canonical file name, prefix of its keys in EMOModel). ``resolve`` turns the files
    found per role into a :class:`~emo_model.weights.checkpoints.Checkpoint` (called as
    ``resolve(family, parts, variant, ignored, toolkit)``, the toolkit being the
    weights module, handed in so that a family module never imports the weights code that imports the families); ``claims(parts)`` says whether a set of part roles is
    this family's (the first family that claims them resolves them).

    ``subfolders``: role -> sub-folder name, for a family published as diffusers model folders (each holding
    ``config.json`` + ``diffusion_pytorch_model.*``) inside one folder: a folder given to the loader that holds any
    of these sub-folders is this family's, and their weight files are its parts.
    """

    parts: Mapping[str, tuple[str, str]]
    resolve: Callable[..., Any]
    claims: Callable[[Mapping[str, list]], bool]
    subfolders: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SpeechEmotionFiles:
    """The audio-emotion classifier a family's original runs on the driving audio to pick its emotion classes
    (emo_model/audio/speech_emotion.py): the sub-folders of the model folder where each part is looked for (first found
    wins) and, for messages, what each folder holds and where it comes from."""

    encoder: tuple[str, ...]  # emotion2vec folders: config.yaml + model.pt
    classifier: tuple[str, ...]  # classifier folders: config.json + diffusion_pytorch_model.safetensors
    encoder_source: str
    classifier_source: str


@dataclass(frozen=True)
class HubFile:
    """One published file a family needs, as ``emo download`` and the loader's "download missing files" fetch it:
    where it is on the Hugging Face Hub and where it goes in ComfyUI's model folders."""

    repo: str  # Hugging Face repository, "owner/name"
    path: str  # the file inside the repository
    folder: str  # ComfyUI model folder: "emo", "vae", "audio_encoders"
    dest: str  # where it goes inside that folder ("hallo/net.pth", "sd-vae-ft-mse/config.json")
    optional: str = ""  # "": always needed; else what it adds (fetched only when asked: ``emo download --optional``)
    revision: str = "main"


# Published components several families load as they are (each repository's own files, in the folders README names).
SD_VAE = tuple(
    HubFile("stabilityai/sd-vae-ft-mse", name, "vae", f"sd-vae-ft-mse/{name}")
    for name in ("config.json", "diffusion_pytorch_model.safetensors")
)
# The face-analysis files the originals' face preprocessing runs on (insightface's detector + ArcFace pack, MediaPipe's
# landmarker), as Hallo, Hallo2 and MEMO publish them in their downloads; they go to ComfyUI/models/face_analysis/models,
# where emo_model/network/identity.py and emo_model/face/front_ends.py look (the packages themselves: pip install insightface
# onnxruntime mediapipe)
FACE_ANALYSIS_FILES = ("1k3d68.onnx", "2d106det.onnx", "face_landmarker_v2_with_blendshapes.task", "genderage.onnx",
                       "glintr100.onnx", "scrfd_10g_bnkps.onnx")


def face_analysis(repo: str, prefix: str = "") -> tuple[HubFile, ...]:
    """The face-analysis files of ``repo`` (under ``prefix`` there) for ComfyUI/models/face_analysis/models."""
    return tuple(HubFile(repo, f"{prefix}face_analysis/models/{name}", "face_analysis", f"models/{name}",
                         optional="the original's face preprocessing (insightface identity, MediaPipe face / lip masks)")
                 for name in FACE_ANALYSIS_FILES)


# optional for any family: the YuNet face detector that Face Mask's "yunet" detector reads from models/emo/face
YUNET_FACE = HubFile("opencv/face_detection_yunet", "face_detection_yunet_2023mar.onnx", "emo",
                     "face/face_detection_yunet_2023mar.onnx", optional="the YuNet face detector (Face Mask detector yunet)")
WAV2VEC2_BASE = tuple(
    HubFile("facebook/wav2vec2-base-960h", name, "audio_encoders", f"wav2vec2-base-960h/{name}")
    for name in ("config.json", "preprocessor_config.json", "model.safetensors")
)


@dataclass(frozen=True)
class ParityHarness:
    """How ``bench --against-original`` runs this family's original (tools/parity/<script>) and ours on its weights.

    ``ours(work, fixture, meta, spec)`` returns the inputs of our side: a dict with ``checkpoint``, ``vae``,
    ``encoder`` (paths), ``wave`` (float32 numpy waveform or None: a synthetic tone of the fixture's length)
    and ``overrides`` (SamplingSettings overrides equal to the harness's recipe).
    """

    script: str
    src_flag: str
    settings: Mapping[str, int]
    extra_args: Callable[[Path], list[str]]  # work folder -> extra harness arguments
    weights_ready: Callable[[Path], bool]
    ours: Callable[..., dict]
    audio_timed: bool  # the original's timed call computes the audio features (so ours times them too)


@dataclass(frozen=True)
class Family:
    name: str  # the value of EMOConfig.family
    label: str  # how artists call it ("Hallo", "EchoMimic v1")
    configs: Mapping[str, Callable[[], EMOConfig]]  # named configs; the first is the full-size default
    files: str  # what a user puts in models/emo (one sentence)
    original: OriginalCode | None = None
    # file or folder name -> where it comes from (for "missing file" messages)
    sources: Mapping[str, str] = field(default_factory=dict)
    # A single-file state dict whose folder has one of these names (lower case) is this family even
    # though its tensors have another family's layout (the same network run with other inference settings).
    folder_names: tuple[str, ...] = ()
    part_files: PartFiles | None = None
    # variant -> what it selects (for families published in variants with identical keys)
    variants: Mapping[str, str] = field(default_factory=dict)
    # old config field path -> new one, for native files written before a rename ("backbone.x" -> "backbone.y")
    renamed_config_fields: Mapping[str, str] = field(default_factory=dict)
    parity: ParityHarness | None = None
    # config name -> label, for the configs whose preset values a widget's tooltip quotes ("Hallo 25").
    quoted_configs: Mapping[str, str] = field(default_factory=dict)
    # names of the emotion classes of its emotion audio modules, in class order (the "emotion" choice)
    emotions: tuple[str, ...] = ()
    # the audio-emotion classifier its original runs to choose the emotion classes ("auto"; None: it has none)
    speech_emotion: SpeechEmotionFiles | None = None
    # the published files ``emo download <name>`` fetches (model, VAE, audio encoder, optional extras); () : none published
    downloads: tuple[HubFile, ...] = ()
    # how its original prepares the portrait (emo_model.face.front_ends.FaceFrontEnd; None: our face front end only)
    face_front_end: Any = None
    # the keypoint images its guider reads, as its original makes them (emo_model.face.keypoint_images.KeypointGuide;
    # None: a face mask or pose images)
    keypoint_guide: Any = None
    # vocal separation its original runs before the audio encoder (emo_model/audio/vocal_separation.py; None: none)
    vocal_separator: SeparatorSettings | None = None

    def config(self, name: str | None = None) -> EMOConfig:
        return self.configs[name or next(iter(self.configs))]()
