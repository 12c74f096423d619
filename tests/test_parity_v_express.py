"""Family parity, V-Express: our network and pipeline against stages recorded from the ORIGINAL code.

The fixture ``parity/v_express/`` was made by ``tools/parity/floor.py -- ... tools/parity/v_express_original.py`` (the
command, commit and package versions are in meta.json; floor.json holds the original's own noise: the same run with 2
and 1 threads): V-Express's own classes at the shapes of ``tiny-v-express``, hashed random weights, its
``VExpressPipeline`` as inference.py calls it: 0.7 s of audio at 30 fps -> 21 frames cut to 20 (3 context windows of 8,
overlap 2), 13 driving keypoint frames stretched to 20 and drawn by its ``draw_kps_image``, 128 px, 4 DDIM steps, CFG
4.5, reference / audio attention weights 0.95 / 3.0, fp32. The VAE and wav2vec2 are tests/parity/hallo's. Frames and
keypoint features are stored for 4 of the 20 frames (meta ``stored_frames``).

Here the weights are written again as V-Express's .bin files, recognised and loaded by our loader (strict), and every
stage is compared: rel err = ||ours - original|| / ||original|| <= max(1e-4, 3 x the original's floor at that stage).
Every quirk of the family, switched off, breaks the first denoiser call.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import parity_common, rel_err
from safetensors.torch import load_file

from emo_model.audio.signal import PreparedAudio
from emo_model.audio.wav2vec2 import Wav2Vec2AudioEncoder
from emo_model.face.keypoint_images import keypoint_images, stretch_sequence
from emo_model.network.model import Conditioning
from emo_model.network.vae import DiffusersVAE
from emo_model.sampling.clip_loop import _Run
from emo_model.sampling.pipeline import EMOPipeline
from emo_model.sampling.settings import SamplingSettings
from emo_model.weights.checkpoints import inspect_checkpoint
from tests import parity_floor

FIXTURE = Path(__file__).parent / "parity" / "v_express"
FILES = {"denoising_unet": "denoising_unet.bin", "reference_net": "reference_net.bin", "v_kps_guider": "v_kps_guider.bin",
         "audio_projection": "audio_projection.bin"}


@pytest.fixture(scope="module")
def golden():
    return json.loads((FIXTURE / "meta.json").read_text()), load_file(FIXTURE / "stages.safetensors")


@pytest.fixture(scope="module")
def files(golden, tmp_path_factory) -> Path:
    """The fixture's weights written again as V-Express's .bin files."""
    meta, _ = golden
    common = parity_common()
    out = tmp_path_factory.mktemp("v_express")
    buffers = load_file(FIXTURE / "buffers.safetensors")
    for name, w in meta["weights"].items():
        state = common.hashed_state_dict([(k, s) for k, s in w["spec"]], w["seed"])
        assert common.digest(state) == w["digest"], f"{name}: regenerated weights differ from the original run's"
        state.update({k.split(".", 1)[1]: v for k, v in buffers.items() if k.startswith(name + ".")})
        torch.save(state, out / FILES[name])
    return out


def _load(files: Path, dtype: torch.dtype = torch.float32):
    ck = inspect_checkpoint(files)
    assert (ck.family, ck.config.name) == ("vexpress", "tiny-v-express") and ck.problem() is None, ck.problem()
    return ck.load(device="cpu", dtype=dtype)


def _pipe(meta: dict, model) -> EMOPipeline:
    """Our pipeline with the fixture's VAE in the model's dtype, as Session loads it."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(FIXTURE.parent / Path(meta["assets"]).name / "vae")
    return EMOPipeline(model, DiffusersVAE(vae.to(model.dtype).eval()))


@pytest.fixture(scope="module")
def model(files):
    return _load(files)


@pytest.fixture(scope="module")
def pipe(golden, model):
    return _pipe(golden[0], model)


def _features(gold) -> torch.Tensor:
    """The audio windows the original handed its projection ([F, 10, D]) in our layout [F, window, rows, D]."""
    w = gold["audio.windows"]
    return w.reshape(w.shape[0], 5, 2, w.shape[-1])


def _kps_images(gold) -> torch.Tensor:
    """Our drawing of the driving keypoints, stretched to the frames (tests/test_keypoint_images.py: pixel for pixel the
    original's images, ``input.kps_images``): [F, 3, H, W] in 0..1 (the original's do_normalize=False)."""
    size, frames = gold["input.kps_images"].shape[1], gold["latents.final"].shape[2]
    return keypoint_images(size, size, stretch_sequence(gold["input.kps_driving"].double().numpy(), frames).numpy())


def _call0(model, pipe, gold) -> torch.Tensor:
    """The first denoiser call (window 0 of step 0, both guidance branches) on the original's recorded inputs; the
    keypoint features are our guider's (the stage kps.features compares them)."""
    ref = pipe.encode_reference(gold["input.portrait"].float() / 255.0, size=gold["input.portrait"].shape[0])
    c = {k.split(".", 2)[2]: v for k, v in gold.items() if k.startswith("unet.call0.")}
    b, _, f = c["sample"].shape[:3]
    with torch.no_grad():
        kps = model.face_features(_kps_images(gold)[:f].to(model.dtype)).transpose(0, 1)[None]
    cond = Conditioning(
        reference=ref.bank, reference_enabled=torch.tensor([False, True]),
        audio_tokens=c["audio"].reshape(b, f, *c["audio"].shape[1:]), face_features=torch.cat([torch.zeros_like(kps), kps]),
    )
    with torch.no_grad():
        return model(c["sample"], c["t"][0], cond)


@pytest.fixture(scope="module")
def ours(golden, model, pipe):
    return _run_ours(*golden, model, pipe)


def _run_ours(meta: dict, gold: dict, model, pipe) -> dict[str, torch.Tensor]:
    """Every stage of ours under the original's name, on the fixture's inputs and initial noise (the audio encoder in
    fp32 whatever the model's dtype, as Session loads it)."""
    s = meta["settings"]
    keep = s["stored_frames"]
    stages = {}
    encoder = Wav2Vec2AudioEncoder.from_checkpoint(FIXTURE.parent / Path(meta["assets"]).name / "wav2vec2", model.config.audio)
    # the whole audio (21 frames' worth) spread over the 20 frames cut to whole windows (inference.py:255-264): our
    # PreparedAudio holds exactly its frames' samples, and the cut is not done yet, so the windowing is called directly
    audio = PreparedAudio(waveform=gold["input.waveform"], num_frames=round(s["seconds"] * s["fps"]), fps=float(s["fps"]))
    features = encoder._last_state_windows(dataclasses.replace(audio, num_frames=s["video_length"]))
    stages["audio.windows"] = features.reshape(features.shape[0], -1, features.shape[-1])
    with torch.no_grad():
        stages["kps.features"] = model.face_features(_kps_images(gold)[keep].to(model.dtype)).transpose(0, 1)[None]
        stages["audio.tokens"] = model.audio_tokens(features)[0]
        ref = pipe.encode_reference(gold["input.portrait"].float() / 255.0, size=s["size"])
    stages["reference.latents"] = ref.latent
    stages["unet.call0.out"] = _call0(model, pipe, gold)

    steps = []
    original_step = _Run._step

    def step(run, pred, t, latents, generator):
        if not steps:
            stages["latents.init"] = latents[None].clone() if latents.dim() == 4 else latents.clone()
        out = original_step(run, pred, t, latents, generator)
        steps.append(out)
        return out

    patch = pytest.MonkeyPatch()
    patch.setattr(_Run, "_step", step)
    try:
        settings = SamplingSettings.from_preset(model.config.preset, steps=s["steps"], cfg=s["cfg"], audio_cfg=s["cfg"],
                                                frames_per_clip=s["context"], context_overlap=s["overlap"])
        frames = pipe.generate_frames(ref, features, settings=settings, pose_frames=_kps_images(gold),
                                      noise=gold["latents.init"][0])
    finally:
        patch.undo()
    last = steps[-1]
    stages["latents.final"] = last[None] if last.dim() == 4 else last
    stages["frames"] = frames.permute(3, 0, 1, 2)[None][:, :, keep]
    return stages


STAGES = ("audio.windows", "kps.features", "audio.tokens", "reference.latents", "unet.call0.out", "latents.init", "latents.final", "frames")


@pytest.mark.parametrize("stage", STAGES)
def test_stage_matches_the_original(stage, golden, ours):
    _, gold = golden
    max_abs, rel = rel_err(ours[stage], gold[stage])
    print(f"{stage}: rel err {rel:.2e} (floor {parity_floor.floor(FIXTURE, stage):.2e})")  # -s shows every stage
    parity_floor.check(rel, FIXTURE, stage, what=f"V-Express's original code (max abs {max_abs:.3e})")


def test_fixture_is_a_hard_case(golden):
    meta, gold = golden
    s = meta["settings"]
    assert s["windows"] >= 3 and s["cfg"] >= 4 and s["video_length"] == gold["latents.final"].shape[2] == 20
    size = sum(p.stat().st_size for p in FIXTURE.iterdir())
    assert size < 3_000_000, size


QUIRKS_OFF = {
    "reference_attention_scale": lambda m: _quirk(m, reference_attention_scale=1.0),
    "audio_attention_scale": lambda m: _quirk(m, audio_attention_scale=1.0),
    "unconditional_reference": lambda m: _quirk(m, unconditional_reference="none"),
    "bank_after_self_attention": lambda m: setattr(m.reference_unet, "bank_after_self_attention", False),
    "cross_attention_zero_token": lambda m: setattr(m.reference_unet, "cross_attention_zero_token", False),
}


def _quirk(model, **changes):
    model.config.preset.quirks = dataclasses.replace(model.config.preset.quirks, **changes)


@pytest.mark.parametrize("quirk", sorted(QUIRKS_OFF))
def test_each_quirk_switched_off_breaks_the_denoiser(quirk, golden, model, pipe):
    _, gold = golden
    quirks = model.config.preset.quirks
    ref_flags = (model.reference_unet.bank_after_self_attention, model.reference_unet.cross_attention_zero_token)
    try:
        QUIRKS_OFF[quirk](model)
        _, rel = rel_err(_call0(model, pipe, gold), gold["unet.call0.out"])
    finally:
        model.config.preset.quirks = quirks
        model.reference_unet.bank_after_self_attention, model.reference_unet.cross_attention_zero_token = ref_flags
    assert rel > 10 * parity_floor.tolerance(FIXTURE, "unet.call0.out"), f"{quirk} off: rel err only {rel:.2e}"


# ---- half precision (inference.py's default --dtype fp16) -------------------------------------------------------------
# tests/parity/v_express_fp16: the same run as the fp32 fixture (same weights, inputs, VAE, wav2vec2, 3 windows, CFG 4.5)
# with V-Express's own default dtype: every module in half, wav2vec2 included, the bank, noise, latents, window sums,
# guidance and DDIM step in half. Our side: the same files loaded with dtype=float16 and the VAE in the model's dtype,
# as Session.load(dtype=torch.float16) does; our wav2vec2 stays fp32 and our latents, guidance and scheduler stay fp32
# (the upcasts docs/parity.md lists for EchoMimic v1, the same code).
HALF = FIXTURE.parent / "v_express_fp16"


@pytest.fixture(scope="module")
def half_golden(golden):
    meta32, gold32 = golden
    meta = json.loads((HALF / "meta.json").read_text())
    # the half fixture does not store the inputs again: they are the fp32 fixture's (checked by digest)
    inputs = {k: v for k, v in sorted(gold32.items()) if k.startswith("input.")}
    assert parity_common().digest(inputs) == meta["inputs_digest"], "the fp32 and fp16 fixtures were made from other inputs"
    return meta, {**inputs, **load_file(HALF / "stages.safetensors")}


@pytest.fixture(scope="module")
def ours_half(half_golden, files):
    model = _load(files, torch.float16)
    assert model.dtype == torch.float16
    pipe = _pipe(half_golden[0], model)
    stages = _run_ours(*half_golden, model, pipe)
    stages["unet.call0.out"] = _call0(model, pipe, half_golden[1])
    return stages


def test_half_fixture_is_the_fp32_run_in_v_express_default_precision(golden, half_golden):
    """Fixture sanity: only the precision differs from the fp32 fixture (so its stages are the half run's reference)."""
    (meta32, _), (meta16, gold16) = golden, half_golden
    half, full = dict(meta16["settings"]), dict(meta32["settings"])
    assert half.pop("dtype") == "fp16" and full.pop("dtype", "fp32") == "fp32"
    assert half == full
    assert {k: w["digest"] for k, w in meta16["weights"].items()} == {k: w["digest"] for k, w in meta32["weights"].items()}
    assert meta16["assets"] == meta32["assets"] and meta16["original"] == meta32["original"]
    assert gold16["latents.final"].dtype == torch.float16 and gold16["audio.windows"].dtype == torch.float16


@pytest.mark.parametrize("stage", STAGES)
def test_half_precision_stage_matches_v_express_fp16(stage, golden, half_golden, ours_half):
    """Ours in fp16 against V-Express in fp16, and against V-Express in fp32 (the rule of docs/parity.md, "Half precision").

    Allowed: max(1e-4, 3 x the half run's thread floor, 3 x gap), gap = how far V-Express's fp16 run is from its fp32
    run at the stage (the precision's own error), both ways: ours in half is that close to the original's half run, and
    no farther from the original's fp32 run than 3 x the original's own half run is."""
    gold16, gold32 = half_golden[1][stage], golden[1][stage]
    gap = rel_err(gold16, gold32)[1]
    tol = max(parity_floor.tolerance(HALF, stage), 3 * gap)
    mx16, rel16 = rel_err(ours_half[stage], gold16)
    mx32, rel32 = rel_err(ours_half[stage], gold32)
    print(f"{stage}: ours16 vs V-Express16 {rel16:.2e}, ours16 vs V-Express32 {rel32:.2e}, gap {gap:.2e}, "
          f"half floor {parity_floor.floor(HALF, stage):.2e}")  # -s shows the table of docs/parity.md
    assert rel16 <= tol, f"{stage}: ours fp16 vs V-Express fp16 rel err {rel16:.3e} (max abs {mx16:.3e}); allowed {tol:.3e}"
    assert rel32 <= tol, f"{stage}: ours fp16 vs V-Express fp32 rel err {rel32:.3e} (max abs {mx32:.3e}); allowed {tol:.3e}"


def test_half_precision_run_is_not_the_fp32_run(golden, half_golden, ours_half, ours):
    """Both sides really ran in half: the final latents and frames move from the fp32 run on each side (else the test
    above compares fp32 with fp32), and ours stay finite."""
    for stage in ("latents.final", "frames"):
        assert torch.isfinite(ours_half[stage]).all()
        assert rel_err(half_golden[1][stage], golden[1][stage])[1] > 1e-3
        assert rel_err(ours_half[stage], ours[stage])[1] > 1e-3
