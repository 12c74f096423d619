"""Test harness for the node pack without ComfyUI: load the pack like ComfyUI, fake core nodes, run API graphs.

* :func:`load_pack` imports the repository folder as a package by path, the way ComfyUI's
  ``load_custom_node`` does (module name = folder name, ``__init__.py`` executed, relative imports).
* :data:`CORE_STANDINS` are minimal stand-ins for the core nodes our example workflows use
  (LoadImage, LoadAudio, ImageScaleBy, CreateVideo, SaveVideo), with the same inputs and outputs.
* :func:`run_api` executes an API-format graph by following its links.
* :func:`make_test_models` writes tiny checkpoints into a models folder (EMO_MODELS_DIR).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from conftest import DATA, ROOT, read_gz_json_text, tiny_vae

OBJECT_INFO = DATA / "comfy_object_info.json.gz"  # trimmed GET /object_info of a real ComfyUI (tests/data/README.md)
OUR_TYPES = {"EMO_MODEL", "EMO_AUDIO", "EMO_REFERENCE", "EMO_CROP"}
# other packs' types an optional input of ours takes (the link only forms where that pack is installed)
# VideoHelperSuite's Meta Batch Manager -> EMO Paste Back; comfyui_controlnet_aux's DWPose Estimator -> EMO Sampler's pose
OTHER_PACK_TYPES = {"VHS_BatchManager", "POSE_KEYPOINT"}
PRIMITIVES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
# combos whose options are files on the user's disk: their saved values cannot be checked
FILE_COMBOS = {("LoadEMOModel", "model"), ("LoadEMOModel", "vae"), ("LoadEMOModel", "audio_encoder"), ("LoadImage", "image"), ("LoadAudio", "audio")}


def load_pack(name: str = "ComfyUI-EMO"):
    """Import the repo folder as ComfyUI does: by path, as a package named after the folder."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def core_object_info() -> dict:
    return json.loads(read_gz_json_text(OBJECT_INFO))


def core_types(info: dict) -> set[str]:
    types = set(PRIMITIVES)
    for node in info.values():
        types.update(t for t in node["output"] if isinstance(t, str))
        for group in ("required", "optional"):
            for spec in node["input"].get(group, {}).values():
                if isinstance(spec[0], str) and spec[0] != "COMBO":
                    types.add(spec[0])
    return types


# ---- core node stand-ins (same sockets as core, minimal behaviour) -----------------------------------


class LoadImage:
    input_dir: Path = Path(".")
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load"

    def load(self, image):
        import cv2

        bgr = cv2.imread(str(self.input_dir / image), cv2.IMREAD_COLOR)
        rgb = torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255)[None]
        return (rgb, torch.zeros(1, *rgb.shape[1:3]))


class LoadAudio:
    input_dir: Path = Path(".")
    RETURN_TYPES = ("AUDIO",)
    FUNCTION = "load"

    def load(self, audio):
        from emo_model.audio.signal import load_audio

        wave, rate = load_audio(str(self.input_dir / audio))
        return ({"waveform": wave[None], "sample_rate": rate},)


class ImageScaleBy:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"

    def upscale(self, image, upscale_method, scale_by):
        x = F.interpolate(image.permute(0, 3, 1, 2), scale_factor=scale_by, mode="bicubic", align_corners=False)
        return (x.clamp(0, 1).permute(0, 2, 3, 1),)


class CreateVideo:
    RETURN_TYPES = ("VIDEO",)
    FUNCTION = "create"

    def create(self, images, fps, audio=None):
        return ({"images": images, "fps": fps, "audio": audio},)


class SaveVideo:
    output_dir: Path = Path(".")
    RETURN_TYPES = ()
    FUNCTION = "save"

    def save(self, video, filename_prefix, format, codec):
        from emo_model.video_io import write_video

        path = self.output_dir / f"{filename_prefix.replace('/', '_')}.mp4"
        write_video(path, video["images"], video["fps"], audio=video["audio"])
        return {"ui": {"images": [{"filename": path.name}]}, "result": ()}


CORE_STANDINS = {c.__name__: c for c in (LoadImage, LoadAudio, ImageScaleBy, CreateVideo, SaveVideo)}


def tiny_graph(graph: dict) -> dict:
    """An example API graph at test size: 64 px crops, 2 denoising steps (a copy; the input is untouched)."""
    graph = json.loads(json.dumps(graph))
    for node in graph.values():
        if node["class_type"] == "EMOFaceMask":
            node["inputs"]["size"] = 64
        if node["class_type"] == "EMOSampler":
            node["inputs"]["steps"] = 2
    return graph


def run_api(graph: dict, classes: dict) -> tuple[dict, dict]:
    """Execute an API-format graph; returns ({node id: outputs}, {node id: ui})."""
    outputs: dict[str, tuple] = {}
    uis: dict[str, dict] = {}
    pending = dict(graph)
    while pending:
        ready = [
            nid
            for nid, node in pending.items()
            if all(not isinstance(v, list) or v[0] in outputs for v in node["inputs"].values())
        ]
        if not ready:
            raise RuntimeError(f"cycle or missing link among {sorted(pending)}")
        for nid in sorted(ready, key=int):
            node = pending.pop(nid)
            cls = classes[node["class_type"]]
            kwargs = {k: (outputs[v[0]][v[1]] if isinstance(v, list) else v) for k, v in node["inputs"].items()}
            hidden = cls.INPUT_TYPES().get("hidden", {}) if hasattr(cls, "INPUT_TYPES") else {}
            for name, kind in hidden.items():
                kwargs[name] = {"UNIQUE_ID": nid, "PROMPT": graph, "EXTRA_PNGINFO": {"workflow": {"note": "test"}}}.get(kind)
            result = getattr(cls(), cls.FUNCTION)(**kwargs)
            if isinstance(result, dict):
                uis[nid] = result.get("ui", {})
                result = result.get("result", ())
            outputs[nid] = tuple(result)
    return outputs, uis


# ---- test media and models ---------------------------------------------------------------------------


def write_portrait(path: Path, size: int = 160) -> Path:
    import cv2
    from skimage import data

    face = data.astronaut()[30:330, 80:380]  # a real face, roughly centred
    cv2.imwrite(str(path), cv2.cvtColor(cv2.resize(face, (size, size)), cv2.COLOR_RGB2BGR))
    return path


def write_scene(path: Path, width: int = 320, height: int = 180) -> Path:
    """A wide picture (16:9 by default) with a real face right of centre, for the paste-back workflow."""
    import cv2
    from skimage import data

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    scene = np.stack([xx / width, yy / height, 0.5 + 0.3 * np.sin(xx / 9.0)], -1) * 255
    face = cv2.resize(data.astronaut()[30:330, 80:380], (height, height))
    x0 = width - height - width // 10
    scene[:, x0:x0 + height] = face
    cv2.imwrite(str(path), cv2.cvtColor(scene.astype(np.uint8), cv2.COLOR_RGB2BGR))
    return path


def write_speech(path: Path, seconds: float = 1.3, rate: int = 22050) -> Path:
    import soundfile as sf

    from emo_model.video_io import write_video  # noqa: F401  (PyAV is there)

    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t))  # 4 syllables per second
    wave = 0.3 * envelope * (np.sin(2 * np.pi * 220 * t) + 0.5 * np.sin(2 * np.pi * 880 * t))
    sf.write(str(path), np.stack([wave, wave], 1).astype(np.float32), rate)
    return path


def tiny_wav2vec2_folder(path: Path, hidden: int = 32, layers: int = 2) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16, 16, 16, 16, 16),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    Wav2Vec2Model(cfg).save_pretrained(path)
    return path


def whisper_encoder_state(d: int, blocks: int, rnd) -> dict[str, torch.Tensor]:
    """Random encoder weights in OpenAI whisper's names, ``d`` wide, ``blocks`` blocks; ``rnd(*shape, centre=0.0)``
    draws each tensor."""
    sd = {
        "encoder.positional_embedding": rnd(1500, d), "encoder.conv1.weight": rnd(d, 80, 3), "encoder.conv1.bias": rnd(d),
        "encoder.conv2.weight": rnd(d, d, 3), "encoder.conv2.bias": rnd(d),
        "encoder.ln_post.weight": rnd(d, centre=1.0), "encoder.ln_post.bias": rnd(d),
    }
    for i in range(blocks):
        p = f"encoder.blocks.{i}."
        for name in ("query", "key", "value", "out"):
            sd[p + f"attn.{name}.weight"] = rnd(d, d)
            if name != "key":
                sd[p + f"attn.{name}.bias"] = rnd(d)
        for ln in ("attn_ln", "mlp_ln"):
            sd[p + f"{ln}.weight"], sd[p + f"{ln}.bias"] = rnd(d, centre=1.0), rnd(d)
        sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"] = rnd(4 * d, d), rnd(4 * d)
        sd[p + "mlp.2.weight"], sd[p + "mlp.2.bias"] = rnd(d, 4 * d), rnd(d)
    return sd


def tiny_whisper_pt(path: Path, width: int = 384, blocks: int = 2, heads: int = 6) -> Path:
    """An OpenAI-format whisper checkpoint (``dims`` + ``model_state_dict``) with random weights, as wide as the
    tiny EchoMimic layout's audio tokens (384) and ``blocks`` encoder blocks (embedding + 2 = its 3 layers)."""
    g = torch.Generator().manual_seed(3)

    def rnd(*shape, centre=0.0):
        return centre + 0.05 * torch.randn(*shape, generator=g)

    sd = whisper_encoder_state(width, blocks, rnd)
    d = width
    dims = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": d, "n_audio_head": heads, "n_audio_layer": blocks,
            "n_vocab": 51865, "n_text_ctx": 448, "n_text_state": d, "n_text_head": heads, "n_text_layer": 1}
    torch.save({"dims": dims, "model_state_dict": sd}, path)
    return path


def echomimic_parts(model, folder: Path, names: dict[str, str] | None = None) -> Path:
    """A model saved as EchoMimic v1's four part files (the motion modules apart from the denoising UNet);
    ``names``: role -> file name of the parts to write (default: all four, ``<role>.pth``)."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    den = {k.removeprefix("denoising_unet."): v for k, v in sd.items() if k.startswith("denoising_unet.")}
    parts = {
        "denoising_unet": {k: v for k, v in den.items() if ".motion_modules." not in k},
        "motion_module": {k: v for k, v in den.items() if ".motion_modules." in k},
        "reference_unet": {k.removeprefix("reference_unet."): v for k, v in sd.items() if k.startswith("reference_unet.")},
        "face_locator": {k.removeprefix("face_locator."): v for k, v in sd.items() if k.startswith("face_locator.")},
    }
    for role, name in (names or {role: f"{role}.pth" for role in parts}).items():
        torch.save(parts[role], folder / name)
    return folder


def diffusers_part_folders(model, folder: Path, family: str) -> Path:
    """A model saved as a family's diffusers sub-folders (each config.json + diffusion_pytorch_model.safetensors)."""
    from safetensors.torch import save_file

    from emo_model.families import get_family

    parts = get_family(family).part_files
    state = model.state_dict()
    for role, sub in parts.subfolders.items():
        prefix = parts.parts[role][1]
        (folder / sub).mkdir(parents=True)
        (folder / sub / "config.json").write_text("{}")
        save_file({k[len(prefix):]: v.contiguous() for k, v in state.items() if k.startswith(prefix)},
                  str(folder / sub / "diffusion_pytorch_model.safetensors"))
    return folder


def v_express_parts(model, folder: Path) -> Path:
    """A model saved as V-Express's five part files (``.bin``, the motion modules apart from the denoising UNet)."""
    from emo_model.families.v_express import PARTS

    folder.mkdir(parents=True, exist_ok=True)
    roles = {"denoising_unet": "denoising_unet", "reference_unet": "reference_unet", "face_locator": "face_locator", "audioproj": "audio_proj"}
    parts: dict[str, dict] = {role: {} for role in PARTS}
    for key, value in model.state_dict().items():
        module, rest = key.split(".", 1)
        if module in roles:
            parts["motion_module" if ".motion_modules." in rest else roles[module]][rest] = value.clone()
    for role, tensors in parts.items():
        torch.save(tensors, folder / PARTS[role][0])
    return folder


def make_test_models(models: Path) -> dict[str, str]:
    """Tiny checkpoints in the layout artists use; returns the entries to select in Load EMO Model."""
    from conftest import perturb_zero_inits

    from emo_model.network.model import EMOModel
    from emo_model import weights

    (models / "emo" / "hallo").mkdir(parents=True)
    (models / "emo" / "emo").mkdir(parents=True)
    (models / "vae").mkdir()
    (models / "audio_encoders").mkdir()
    torch.manual_seed(0)
    tiny = perturb_zero_inits(EMOModel("tiny").eval())
    weights.save_native(tiny, models / "emo" / "emo" / "emo.safetensors", vae=tiny_vae())
    torch.manual_seed(1)
    hallo = perturb_zero_inits(EMOModel("tiny-hallo").eval())
    torch.save({k: v.clone() for k, v in hallo.state_dict().items()}, models / "emo" / "hallo" / "net.pth")
    (models / "emo" / "hallo2").mkdir()  # the same tensors: the folder name selects Hallo2's settings
    torch.save({k: v.clone() for k, v in hallo.state_dict().items()}, models / "emo" / "hallo2" / "net.pth")
    tiny_vae().save_pretrained(models / "vae" / "sd-vae-ft-mse")
    tiny_wav2vec2_folder(models / "audio_encoders" / "wav2vec2-base-960h")
    torch.manual_seed(2)
    echomimic_parts(perturb_zero_inits(EMOModel("tiny-echomimic").eval()), models / "emo" / "echomimic")
    tiny_whisper_pt(models / "audio_encoders" / "whisper_tiny.pt")
    torch.manual_seed(5)  # EchoMimic v2: the pose encoder (3 input channels) under its published name
    echomimic_parts(perturb_zero_inits(EMOModel("tiny-echomimic-v2").eval()), models / "emo" / "echomimic_v2",
                    names={"denoising_unet": "denoising_unet.pth", "motion_module": "motion_module.pth",
                           "reference_unet": "reference_unet.pth", "face_locator": "pose_encoder.pth"})
    torch.manual_seed(4)
    diffusers_part_folders(perturb_zero_inits(EMOModel("tiny-memo").eval()), models / "emo" / "memo", "memo")
    torch.manual_seed(6)
    v_express_parts(perturb_zero_inits(EMOModel("tiny-v-express").eval()), models / "emo" / "v-express")
    return {"emo": "emo/emo.safetensors", "hallo": "hallo/net.pth", "hallo2": "hallo2/net.pth", "echomimic": "echomimic/", "echomimic_v2": "echomimic_v2/", "memo": "memo/", "vexpress": "v-express/", "vae": "sd-vae-ft-mse/",
            "encoder": "wav2vec2-base-960h/", "whisper": "whisper_tiny.pt"}


def node_result(out):
    """A node's outputs, whether it returned a tuple or ``{"ui": ..., "result": ...}``."""
    return out["result"] if isinstance(out, dict) else out


def demo_through_nodes(audio_file):
    """The built-in demo loaded through the nodes, as an artist wires it: (nodes, session, reference,
    EMO_AUDIO of ``audio_file``, its AUDIO dict); the reference is a random 64x64 portrait."""
    import soundfile as sf
    import torch

    nodes = load_pack().NODE_CLASS_MAPPINGS
    (session,) = node_result(nodes["LoadEMOModel"]().load(
        "emo-tiny-demo (built in, CPU)", "(bundled with the model / not needed)",
        "(none: log-mel demo, or use a core AUDIO_ENCODER_OUTPUT)", "fp32", "standard",
    ))
    wave, rate = sf.read(str(audio_file), dtype="float32", always_2d=True)
    audio = {"waveform": torch.from_numpy(wave.T.copy())[None], "sample_rate": rate}
    emo_audio = nodes["EMOAudioEncode"]().encode(session, audio, 0.0, "off")["result"][0]
    (reference,) = node_result(nodes["EMOReferenceEncode"]().encode(session, torch.rand(1, 64, 64, 3), 0))
    return nodes, session, reference, emo_audio, audio


# ---- the command line, as the CLI tests drive it ---------------------------------------------------------


def cli(capsys, *args) -> tuple[int, str, str]:
    """``emo ARGS`` in this process: (exit status, stdout, stderr)."""
    from emo_model.app.cli import main

    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def error_line(err: str) -> str:
    """The one error line of a failed run (progress-bar noise on stderr aside)."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not line.startswith("EMO:")]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def tiny_cli_files(base: Path) -> dict:
    """A tiny native checkpoint (with its VAE), a 96 px portrait and 0.4 s of speech in ``base``, for CLI runs."""
    from conftest import perturb_zero_inits, tiny_vae

    from emo_model.network.model import EMOModel
    from emo_model import weights

    torch.manual_seed(0)
    model = perturb_zero_inits(EMOModel("tiny").eval())
    weights.save_native(model, base / "tiny.safetensors", vae=tiny_vae())
    return {
        "dir": base,
        "model": base / "tiny.safetensors",
        "image": write_portrait(base / "face.png", size=96),
        "audio": write_speech(base / "speech.wav", seconds=0.4),
    }
