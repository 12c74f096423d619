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
import os
from pathlib import Path

import pytest
import torch
from conftest import parity_common, rel_err
from safetensors.torch import load_file

from emo_model.audio.signal import PreparedAudio, frame_samples
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
HALF = FIXTURE.parent / "v_express_fp16"


def FAMILY_CONFIG():
    from emo_model.families.v_express import tiny_v_express_config

    return tiny_v_express_config()
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


def _load(files: Path, dtype: torch.dtype = torch.float32, config: str = "tiny-v-express"):
    ck = inspect_checkpoint(files)
    assert (ck.family, ck.config.name) == ("vexpress", config) and ck.problem() is None, ck.problem()
    return ck.load(device="cpu", dtype=dtype)


def _assets(meta: dict) -> Path:
    """The folder holding the run's vae/ and wav2vec2/: tests/parity/hallo for the tiny fixtures; a full-size fixture's
    own folder (``assets_dir``, set by the full-size test: its meta says ``"."``)."""
    return Path(meta["assets_dir"]) if "assets_dir" in meta else FIXTURE.parent / Path(meta["assets"]).name


def _pipe(meta: dict, model) -> EMOPipeline:
    """Our pipeline with the fixture's VAE in the model's dtype, as Session loads it."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(_assets(meta) / "vae")
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
    features = _audio_windows(meta, gold, model.config.audio)
    stages["audio.windows"] = features.reshape(features.shape[0], -1, features.shape[-1])
    with torch.no_grad():
        stages["kps.features"] = model.face_features(_kps_images(gold)[keep].to(model.dtype)).transpose(0, 1)[None]
        stages["audio.tokens"] = model.audio_tokens(features)[0]
        ref = pipe.encode_reference(gold["input.portrait"].float() / 255.0, size=s["size"])
    stages["reference.latents"] = ref.latent
    stages["unet.call0.out"] = _call0(model, pipe, gold)
    stages["latents.init"], stages["latents.final"], frames = _generate(meta, gold, model, pipe, ref, features)
    stages["frames"] = frames.permute(3, 0, 1, 2)[None][:, :, keep]
    return stages


def _audio_windows(meta: dict, gold: dict, audio_config) -> torch.Tensor:
    """Our wav2vec2 front end on the fixture's waveform: [F, 5, 2, D]."""
    s = meta["settings"]
    encoder = Wav2Vec2AudioEncoder.from_checkpoint(_assets(meta) / "wav2vec2", audio_config)
    # the whole audio (21 frames' worth) spread over the 20 frames cut to whole windows (inference.py:255-264): our
    # PreparedAudio holds exactly its frames' samples, and the cut is not done yet, so the windowing is called directly
    audio = PreparedAudio(waveform=gold["input.waveform"], num_frames=round(s["seconds"] * s["fps"]), fps=float(s["fps"]))
    if audio_config.hidden_states == "last":
        return encoder._last_state_windows(dataclasses.replace(audio, num_frames=s["video_length"]))
    n = s["video_length"]  # another front end (a quirk switched off): its own path on the 20 frames' samples
    return encoder.encode(PreparedAudio(waveform=audio.waveform[: frame_samples(n, audio.fps)], num_frames=n, fps=audio.fps))


def _generate(meta: dict, gold: dict, model, pipe, ref, features, noise="original"):
    """The whole windowed sampling from the original's initial noise (``noise=None``: from the fixture's seed, as a user
    runs it): (initial latents, final latents, frames)."""
    s = meta["settings"]
    stages = {}
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
                                                frames_per_clip=s["context"], context_overlap=s["overlap"], seed=s["seed"])
        frames = pipe.generate_frames(ref, features, settings=settings, pose_frames=_kps_images(gold),
                                      noise=gold["latents.init"][0] if noise == "original" else noise)
    finally:
        patch.undo()
    last = steps[-1]
    return stages["latents.init"], last[None] if last.dim() == 4 else last, frames


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


def _joint_reference(model):
    """UNetConfig.reference_attention "joint" instead of "separate": the bank joins attn1's keys/values (norm1_5 /
    attn1_5 unused), as Animate Anyone / Hallo / EchoMimic read it."""
    for block in model.modules():
        if getattr(block, "attn1_5", None) is not None:
            block.attn1_5 = None


QUIRKS_OFF = {
    "reference_attention_separate": _joint_reference,
    "reference_attention_scale": lambda m: _quirk(m, reference_attention_scale=1.0),
    "audio_attention_scale": lambda m: _quirk(m, audio_attention_scale=1.0),
    "unconditional_reference": lambda m: _quirk(m, unconditional_reference="none"),
    "bank_after_self_attention": lambda m: setattr(m.reference_unet, "bank_after_self_attention", False),
    "cross_attention_zero_token": lambda m: setattr(m.reference_unet, "cross_attention_zero_token", False),
}


def _quirk(model, **changes):
    model.config.preset.quirks = dataclasses.replace(model.config.preset.quirks, **changes)


@pytest.mark.parametrize("quirk", sorted(QUIRKS_OFF))
def test_each_quirk_switched_off_breaks_the_denoiser(quirk, golden, restored, pipe):
    model = restored
    _, gold = golden
    quirks = model.config.preset.quirks
    ref_flags = (model.reference_unet.bank_after_self_attention, model.reference_unet.cross_attention_zero_token)
    try:
        QUIRKS_OFF[quirk](model)
        _, rel = rel_err(_call0(model, pipe, gold), gold["unet.call0.out"])
    finally:
        model.config.preset.quirks = quirks
        model.reference_unet.bank_after_self_attention, model.reference_unet.cross_attention_zero_token = ref_flags
    print(f"{quirk} off: first denoiser call rel err {rel:.2e}")
    assert rel > 10 * parity_floor.tolerance(FIXTURE, "unet.call0.out"), f"{quirk} off: rel err only {rel:.2e}"


# ---- the quirks past the first denoiser call: each switched off moves its stage past the standard --------------------


@pytest.fixture()
def restored(model):
    """Undo whatever a quirk test switched off on the shared fp32 model (config fields, attn1_5 modules)."""
    preset, audio = model.config.preset, model.config.audio
    quirks, scheduler = preset.quirks, preset.scheduler
    separate = {name: (m.attn1_5, m.norm1_5) for name, m in model.named_modules() if getattr(m, "attn1_5", None) is not None}
    yield model
    preset.quirks, preset.scheduler = quirks, scheduler
    model.config.preset, model.config.audio = preset, audio
    for name, m in model.named_modules():
        if name in separate:
            m.attn1_5, m.norm1_5 = separate[name]


# sampling quirks, judged on the final latents of the whole windowed run (the first call does not see them)
SAMPLING_OFF = {
    # pipelines/context.py uniform() with closed_loop=True (EchoMimic's): a 4th window wrapping 18, 19, 0 .. 5
    "context_schedule uniform (closed loop)": {"quirks": {"context_schedule": "uniform"}},
    "context_schedule ramp (EMO's blended windows)": {"quirks": {"context_schedule": "ramp"}},
    # inference_v2.yaml's scaled_linear betas -> linear (Hallo's)
    "beta_schedule linear": {"scheduler": {"beta_schedule": "linear"}},
    # diffusers' default set_alpha_to_one=True (DDIMScheduler(**kwargs)) -> alphas_cumprod[0] at the last step
    "set_alpha_to_one False": {"scheduler": {"set_alpha_to_one": False}},
}


@pytest.mark.parametrize("quirk", sorted(SAMPLING_OFF))
def test_each_sampling_quirk_switched_off_moves_the_final_latents(quirk, golden, restored, pipe, ours):
    meta, gold = golden
    model = restored
    preset = model.config.preset
    change = SAMPLING_OFF[quirk]
    preset.quirks = dataclasses.replace(preset.quirks, **change.get("quirks", {}))
    preset.scheduler = dataclasses.replace(preset.scheduler, **change.get("scheduler", {}))
    ref = pipe.encode_reference(gold["input.portrait"].float() / 255.0, size=meta["settings"]["size"])
    features = _audio_windows(meta, gold, model.config.audio)
    _, final, _ = _generate(meta, gold, model, pipe, ref, features)
    _, rel = rel_err(final, gold["latents.final"])
    tol = parity_floor.tolerance(FIXTURE, "latents.final")
    print(f"{quirk}: final latents rel err {rel:.2e} (standard {tol:.2e}; on: {rel_err(ours['latents.final'], gold['latents.final'])[1]:.2e})")
    assert rel > 10 * tol, f"{quirk}: the final latents still match ({rel:.2e})"


class _Functional:
    """torch.nn.functional with some functions replaced (a front-end quirk switched off in emo_model.audio.wav2vec2)."""

    def __init__(self, **replaced):
        self.replaced = replaced

    def __getattr__(self, name):
        return self.replaced.get(name) or getattr(torch.nn.functional, name)


def _edge_rows(x, pad, *a, **kw):
    """F.pad of the rows [N, D] by (0, 0, a, b) with copies of the first / last row instead of zeros."""
    if tuple(pad[:2]) != (0, 0) or x.dim() != 2:
        return torch.nn.functional.pad(x, pad, *a, **kw)
    return torch.cat([x[:1].expand(pad[2], -1), x, x[-1:].expand(pad[3], -1)])


AUDIO_OFF = {
    # v_express_pipeline.py:388-392 pads 2 x num_pad rows of zeros on each side, not copies of the edge rows
    "zero rows past the ends -> edge rows": {"functional": {"pad": _edge_rows}},
    # :380-386 F.interpolate(mode='linear') with align_corners left False
    "align_corners False -> True": {"functional": {"interpolate": lambda x, *a, **kw: torch.nn.functional.interpolate(
        x, *a, **{**kw, "align_corners": True})}},
    # :377 last_hidden_state of the whole audio -> every layer per frame (Hallo's front end, same shape at tiny size)
    "hidden_states last -> all": {"audio": {"hidden_states": "all"}},
}


@pytest.mark.parametrize("quirk", sorted(AUDIO_OFF))
def test_each_audio_front_end_quirk_switched_off_moves_the_audio_windows(quirk, golden, model, monkeypatch):
    import emo_model.audio.wav2vec2 as wav2vec2

    meta, gold = golden
    change = AUDIO_OFF[quirk]
    if "functional" in change:
        monkeypatch.setattr(wav2vec2, "F", _Functional(**change["functional"]))
    features = _audio_windows(meta, gold, dataclasses.replace(model.config.audio, **change.get("audio", {})))
    windows = features.reshape(features.shape[0], -1, features.shape[-1])
    original = gold["audio.windows"]
    assert windows.shape == original.shape, (windows.shape, original.shape)
    _, rel = rel_err(windows, original)
    print(f"{quirk}: audio windows rel err {rel:.2e}")
    assert rel > 10 * parity_floor.tolerance(FIXTURE, "audio.windows"), f"{quirk}: the audio windows still match ({rel:.2e})"


def test_the_original_noise_is_the_seed_after_one_draw_per_wav2vec2_layer(golden, half_golden):
    """What inference.py's seed gives (inference.py:216 ``torch.manual_seed(seed)`` seeds the GLOBAL generator, which the
    pipeline hands to ``randn_tensor`` for one draw of the whole video in its dtype, v_express_pipeline.py:514-523): before
    that draw, transformers 4.41.1 (V-Express's requirements.txt) takes one ``torch.rand([])`` per wav2vec2 encoder layer
    from the global generator (its LayerDrop draw, taken in eval mode too: modeling_wav2vec2.py ``dropout_probability =
    torch.rand([])``), while the audio is encoded inside the pipeline call. So the noise of seed s is the s-seeded stream
    after 12 uniform draws for wav2vec2-base (2 for the fixture's tiny wav2vec2), in fp32 and in the half run alike."""
    (meta, gold), (_, gold16) = golden, half_golden
    layers = FAMILY_CONFIG().audio.layers
    for dtype, recorded in ((torch.float32, gold["latents.init"]), (torch.float16, gold16["latents.init"])):
        g = torch.Generator().manual_seed(meta["settings"]["seed"])
        for _ in range(layers):
            torch.rand([], generator=g)
        assert torch.equal(torch.randn(recorded.shape, generator=g, dtype=dtype), recorded)


def test_our_seed_stream_draws_the_original_noise(golden, half_golden):
    """InferenceQuirks.seed_draws_per_audio_layer = 1 with seed_stream "single": our stream skips one uniform draw per
    audio-encoder layer, then draws V-Express's noise bit for bit (fp32 and the half fixture's fp16); off, it does not."""
    from emo_model.sampling.seed_stream import SeedStream

    (meta, gold), (_, gold16) = golden, half_golden
    s, cfg = meta["settings"], FAMILY_CONFIG()
    q = cfg.preset.quirks
    assert q.seed_stream == "single" and q.seed_draws_per_audio_layer == 1
    shape = tuple(gold["latents.init"].shape)
    for dtype, recorded in ((torch.float32, gold["latents.init"]), (torch.float16, gold16["latents.init"])):
        ours = SeedStream(s["seed"], "single", dtype, skip=q.seed_draws_per_audio_layer * cfg.audio.layers).video(shape, s["context"])
        assert torch.equal(ours.to(dtype), recorded)
        off = SeedStream(s["seed"], "single", dtype).video(shape, s["context"])
        assert rel_err(off, recorded.float())[1] > 1.0  # another draw altogether


def test_our_run_from_the_seed_starts_from_the_original_noise(golden, model, pipe):
    """The whole pipeline given only the seed (no recorded noise): its initial latents are V-Express's."""
    meta, gold = golden
    ref = pipe.encode_reference(gold["input.portrait"].float() / 255.0, size=meta["settings"]["size"])
    features = _audio_windows(meta, gold, model.config.audio)
    meta_steps = dict(meta, settings=dict(meta["settings"], steps=1))
    init, _, _ = _generate(meta_steps, gold, model, pipe, ref, features, noise=None)
    assert torch.equal(init, gold["latents.init"])


# ---- half precision (inference.py's default --dtype fp16) -------------------------------------------------------------
# tests/parity/v_express_fp16: the same run as the fp32 fixture (same weights, inputs, VAE, wav2vec2, 3 windows, CFG 4.5)
# with V-Express's own default dtype: every module in half, wav2vec2 included, the bank, noise, latents, window sums,
# guidance and DDIM step in half. Our side: the same files loaded with dtype=float16 and the VAE in the model's dtype,
# as Session.load(dtype=torch.float16) does; our wav2vec2 stays fp32 and our latents, guidance and scheduler stay fp32
# (the upcasts docs/parity.md lists for EchoMimic v1, the same code).
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


# ---- bench --against-original vexpress (our side at the tiny size) -----------------------------------------------------


def test_bench_against_the_original_runs_our_side_on_the_harness_files(golden, files, tmp_path):
    """``emo bench --against-original vexpress``'s own worker (emo_model/app/commands/bench_original.py ``_ours``) on a
    work folder laid out as ``v_express_original.py --full`` writes it (the part files, vae/, wav2vec2/, speech.npy,
    kps.npy, meta.json), here with the tiny fixture's files: it loads them with our loader, draws the keypoint images,
    encodes the audio inside the timed run (the original's pipeline call does) and generates every frame. Speed is not
    asserted (docs/performance.md has the measured table)."""
    import shutil

    import numpy as np

    from emo_model.app.commands import bench_original
    from emo_model.families.v_express import FAMILY

    meta, gold = golden
    harness = FAMILY.parity
    assert harness is not None and harness.audio_timed and (bench_original.HARNESS / harness.script).is_file()
    fixture = tmp_path / "work" / "fixture"
    shutil.copytree(files, fixture)
    assets = FIXTURE.parent / Path(meta["assets"]).name
    for name in ("vae", "wav2vec2"):
        shutil.copytree(assets / name, fixture / name)
    s = meta["settings"]
    frames = harness.settings["frames"]  # the harness's --seconds 0.8 at --fps 25: exactly 20 frames, 3 whole windows
    np.save(fixture / "speech.npy", parity_common().synthetic_speech(frames * 16000 // 25).astype(np.float32))
    np.save(fixture / "kps.npy", stretch_sequence(gold["input.kps_driving"].double().numpy(), frames).numpy())
    (fixture / "meta.json").write_text(json.dumps({"settings": {"full": True, "size": s["size"], "fps": 25.0, "frames": frames}}))
    assert harness.weights_ready(tmp_path / "work")
    spec = {"family": "vexpress", "work": str(tmp_path / "work"), "size": s["size"], "steps": 1, "repeats": 1, **harness.settings}
    result = bench_original._ours(spec)
    assert result["family"] == "vexpress" and result["frames"] == frames and len(result["runs"]) == 1
    assert result["runs"][0]["seconds"] > 0 and result["runs"][0]["peak_rss"] > 0


def test_bench_against_the_original_offers_v_express_and_runs_its_harness_at_full_size(tmp_path):
    """The command's choices name the family, and the original's side is the parity harness at V-Express's real shapes
    (--full), the same recipe as ours (20 frames at 25 fps in windows of 8 / 2, CFG 3.5)."""
    import argparse

    from emo_model.app.commands import bench_original

    assert "vexpress" in bench_original._harnesses()
    args = argparse.Namespace(against_original="vexpress", original_python="/venv/bin/python", original_src="/src/V-Express",
                              size=128, bench_steps=3, work=str(tmp_path))
    cmd = bench_original._harness_command(args, "--bench", "2")
    assert cmd[:4] == ["/venv/bin/python", str(bench_original.HARNESS / "v_express_original.py"), "--vx-src", "/src/V-Express"]
    assert "--full" in cmd and cmd[cmd.index("--out") + 1] == str(tmp_path.resolve() / "fixture")
    flags = dict(zip(cmd[4:], cmd[5:]))
    assert (flags["--size"], flags["--steps"], flags["--fps"], flags["--seconds"], flags["--cfg"], flags["--bench"]) == (
        "128", "3", "25", "0.8", "3.5", "2")


# ---- full size (opt-in) ------------------------------------------------------------------------------------------------

FULL_DIR = os.environ.get("EMO_PARITY_V_EXPRESS_FULL_DIR")


@pytest.mark.skipif(not FULL_DIR, reason="set EMO_PARITY_V_EXPRESS_FULL_DIR to a full-size fixture (tools/parity/README.md)")
def test_full_size_matches_the_original():
    """Opt-in: ``v_express_original.py --full`` output made through tools/parity/floor.py (V-Express's real shapes: SD1.5
    UNets with its motion modules, ``VKpsGuider(320, (16, 32, 96, 256))``, the 4-layer perceiver, wav2vec2-base's
    structure; random weights in its own .bin part files; ~9.5 GB RAM per run), loaded by our loader from those files as
    the ``v-express`` config: every stage within max(1e-4, 3 x the original's floor there)."""
    folder = Path(FULL_DIR)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["settings"].get("full"), f"{folder} was not made with --full"
    meta["assets_dir"] = str(folder)
    gold = load_file(folder / "stages.safetensors")
    model = _load(folder, config="v-express")
    ours = _run_ours(meta, gold, model, _pipe(meta, model))
    failures = []
    for stage in STAGES:
        max_abs, rel = rel_err(ours[stage], gold[stage])
        tol = parity_floor.tolerance(folder, stage)
        print(f"| V-Express full | {stage} | {rel:.1e} | {parity_floor.floor(folder, stage):.1e} | {max_abs:.1e} |")
        if not rel <= tol:
            failures.append(f"{stage}: rel err {rel:.3e} (allowed {tol:.3e})")
    assert not failures, "; ".join(failures)
