"""Family parity, MEMO: the stages our code can already produce, against MEMO's own ``inference.py`` run.

The fixture (tests/parity/memo/stages.safetensors, the ``pipeline`` section of meta.json) was written by
``tools/parity/memo_original.py --pipeline`` in MEMO's own venv (memoavatar/memo at the commit in meta.json): MEMO's
``main()`` on tiny models written as its four diffusers folders, 3 clips of 4 frames with 4 past frames, 3 FlowMatch
Euler steps, CFG 4.5 (the hard case of issue 24: 3 or more clips, CFG >= 4), 30 fps, fp32, with the tiny VAE and
wav2vec2 of the Hallo fixture. Weights are regenerated from meta.json's key/shape lists with the counter-hash recipe
(tools/parity/common.py) and checked against the digests. ``floor.json`` (tools/parity/floor.py) holds the original's
own noise at every stage: the same run with 2 threads and with 1.

Compared here, each stage against the standard (tests/parity_floor.py: rel err <= max(1e-4, 3 x the original's floor
at that stage); a stage floor.json does not cover fails): the wav2vec2 front end at 30 fps padded to whole clips, the
audio and identity projections, the VAE latents of the reference input and the decoded frames, the FlowMatch Euler steps of the
diffusers scheduler in our venv, our ReferenceNet's features of every slot (norm1 of every spatial transformer with
MEMO's tiled face tokens, the resnet outputs of the levels without attention), and the whole 3-clip generation of our
pipeline on the tiny-memo model loaded from MEMO's four folders: the denoiser's output of both guidance branches at
every step of every clip (with the memory carried from clip to clip), the latents and the video.
The same in MEMO's own precision (its inference.yaml's ``weight_dtype: bf16``) against tests/parity/memo_bf16 (the
original run in bf16 on the CPU, with its own floor): our model and VAE loaded in bf16.
The networks' new blocks are compared one by one in tests/test_memo_modules.py.

Opt-in, full size: ``EMO_PARITY_FULL_DIR=<folder written by memo_original.py --pipeline WORK --full> pytest
tests/test_parity_memo.py -k full`` loads the folder's ``checkpoint/`` (MEMO's four folders at the published shapes,
~10 GB) with our loader as a user's memo/ folder and compares the same stages with the same helpers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, parity_common, rel_err
from tests.parity_floor import load_floor, tolerance
from tests.parity_record import scheduler_steps

# EMO_PARITY_MEMO_DIR: another pipeline fixture made the same way (opt-in; e.g. the 128 px hard case, docs/parity.md)
FIX = Path(os.environ["EMO_PARITY_MEMO_DIR"]) if os.environ.get("EMO_PARITY_MEMO_DIR") else ROOT / "tests" / "parity" / "memo"
META = json.loads((FIX / "meta.json").read_text())["pipeline"]
SET = META["settings"]
F, N, CLIPS, STEPS = SET["frames_per_clip"], SET["past_frames"], SET["clips"], SET["steps"]
VISIBLE = 100  # a deliberate mistake must move a stage this many times past its tolerance


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(FIX / "stages.safetensors")


def test_fixture_is_the_hard_case_and_its_floor_covers_every_stage(golden):
    """Issue 24's hard case (3 or more clips, CFG >= 4) with the original's own thread-count floor recorded for every
    stage of the fixture (two runs, different thread counts)."""
    assert CLIPS >= 3 and SET["cfg"] >= 4, f"the CI fixture must be the hard case, got {CLIPS} clips, CFG {SET['cfg']}"
    floor = load_floor(FIX)
    missing = sorted(set(golden) - set(floor["files"].get("stages.safetensors", {})))
    assert not missing, f"floor.json has no floor for {missing[:5]}: regenerate the fixture with tools/parity/floor.py"


def _weights(sub: str, meta: dict = META) -> dict[str, torch.Tensor]:
    common = parity_common()
    w = meta["weights"][sub]
    state = common.hashed_state_dict([(k, s) for k, s in w["spec"]], w["seed"])
    assert common.digest(state) == w["digest"], f"{sub}: regenerated weights differ from the ones MEMO ran with"
    return state


def _check(name: str, ours: torch.Tensor, gold: torch.Tensor, fix: Path = FIX) -> None:
    """``name`` is the stage (a key of the fixture's stages.safetensors): rel err <= max(1e-4, 3 x the original's floor)."""
    _rows_ok([_row(name, ours, gold)], fix)


def _reused(meta: dict, part: str) -> Path:
    """The VAE / wav2vec2 folder the original ran with (repo-relative for the tiny fixture, absolute for --full)."""
    return ROOT / meta["reused"][part]


def _rows_ok(rows: list[tuple[str, float, float]], fix: Path = FIX) -> None:
    """Every row (stage, max abs, rel err) within the standard: max(1e-4, 3 x the original's own thread-count floor at
    that stage, from ``fix``/floor.json). A stage floor.json does not cover fails."""
    bad = [f"{name}: rel err {rel:.2e} (max abs {mx:.2e}), allowed {tolerance(fix, name):.2e}"
           for name, mx, rel in rows if not rel <= tolerance(fix, name)]
    assert not bad, "differs from the original MEMO:\n" + "\n".join(bad)


def _visible(rel: float, stage: str, what: str, fix: Path = FIX) -> None:
    """A deliberate mistake at ``stage`` must land far outside the standard (VISIBLE x its tolerance)."""
    tol = tolerance(fix, stage)
    assert rel > VISIBLE * tol, f"{what} is not visible in the comparison at {stage} (rel err {rel:.2e}, tolerance {tol:.2e})"


def _row(name: str, ours: torch.Tensor, gold: torch.Tensor) -> tuple[str, float, float]:
    return (name, *rel_err(ours, gold))


def _audio_cfg(meta: dict = META):
    from emo_model.configs import AudioFeatureConfig

    w2v = json.loads((_reused(meta, "wav2vec2") / "config.json").read_text())
    return AudioFeatureConfig(kind="wav2vec2", layers=w2v["num_hidden_layers"], dim=w2v["hidden_size"], margin=2)


def _encode_audio(golden, meta: dict = META):
    from emo_model.audio.encoders import encode_audio
    from emo_model.audio.wav2vec2 import Wav2Vec2AudioEncoder

    cfg, st = _audio_cfg(meta), meta["settings"]
    encoder = Wav2Vec2AudioEncoder.from_checkpoint(_reused(meta, "wav2vec2"), cfg)
    source = {"waveform": golden["input.waveform"].reshape(1, 1, -1), "sample_rate": st["sample_rate"]}
    # MEMO: one wav2vec2 pass over the whole (short) audio, padded to whole clips of F frames
    return encode_audio(source, cfg, encoder, st["fps"], whole_clips_of=st["frames_per_clip"], single_pass=True)


@pytest.fixture(scope="module")
def audio_features(golden):
    return _encode_audio(golden)


def test_audio_front_end_at_30_fps_matches_memo(audio_features, golden):
    assert audio_features.num_frames == META["audio_length"]
    assert audio_features.features.shape[0] == META["padded_frames"] == CLIPS * F
    _check("audio.windows", audio_features.features, golden["audio.windows"])


@pytest.mark.parametrize("c", range(CLIPS))
def test_audio_tokens_match_memo(c, audio_features, golden):
    from emo_model.configs import AudioProjConfig
    from emo_model.network.audio_projection import AudioProjection

    cfg = META["configs"]["audio_proj"]
    proj = AudioProjection(AudioProjConfig(**{k: v for k, v in cfg.items() if not k.startswith("_")}))
    proj.load_state_dict(_weights("audio_proj"), strict=True)
    with torch.no_grad():
        tokens = proj(golden["audio.windows"][c * F : (c + 1) * F])[0]
    _check(f"clip{c}.audio_tokens", tokens, golden[f"clip{c}.audio_tokens"])


def test_identity_tokens_match_memo(golden):
    """Conditional: the face embedding; unconditional: the projection of a zero embedding (not zero tokens)."""
    from emo_model.configs import ImageProjConfig
    from emo_model.network.identity import IdentityProjection

    cfg = META["configs"]["image_proj"]
    proj = IdentityProjection(ImageProjConfig(embed_dim=cfg["clip_embeddings_dim"], cross_attention_dim=cfg["cross_attention_dim"],
                                              tokens=cfg["clip_extra_context_tokens"]))
    proj.load_state_dict(_weights("image_proj"), strict=True)
    emb = golden["input.face_emb"][None]
    with torch.no_grad():
        for c in range(CLIPS):
            _check(f"clip{c}.identity_cond", proj(emb)[0], golden[f"clip{c}.identity_cond"])
            _check(f"clip{c}.identity_uncond", proj(torch.zeros_like(emb))[0], golden[f"clip{c}.identity_uncond"])


def _codec(meta: dict = META, dtype: torch.dtype = torch.float32):
    from diffusers import AutoencoderKL

    from emo_model.network.vae import DiffusersVAE

    return DiffusersVAE(AutoencoderKL.from_pretrained(_reused(meta, "vae")).to(dtype).eval())


@pytest.fixture(scope="module")
def codec():
    return _codec()


def _vae_rows(c: int, codec, golden, steps: int = STEPS) -> list[tuple[str, float, float]]:
    pixels = golden[f"clip{c}.ref_pixels"]  # [1 + past, 3, H, W] in [-1, 1]
    latents = codec.encode(((pixels + 1) / 2).permute(0, 2, 3, 1))
    final = golden[f"clip{c}.step{steps - 1}.latents"].transpose(0, 1)  # [f, 4, h, w]
    return [_row(f"clip{c}.ref_latents", latents, golden[f"clip{c}.ref_latents"]),
            # MEMO's final latents decoded
            _row(f"clip{c}.frames", codec.decode(final).permute(0, 3, 1, 2), golden[f"clip{c}.frames"])]


@pytest.mark.parametrize("c", range(CLIPS))
def test_vae_latents_and_frames_match_memo(c, codec, golden):
    """MEMO encodes [portrait, past frames] one frame at a time (posterior mean x 0.18215) and decodes the final
    latents one frame at a time ((x / 2 + 0.5).clamp(0, 1))."""
    _rows_ok(_vae_rows(c, codec, golden))


def test_fixture_sanity_past_frames_are_the_previous_clips_float_frames(golden):
    """Fixture sanity (reads the fixture only; it checks the recording, not our code): MEMO's run fed its ReferenceNet
    clip 0 the portrait repeated, clip c the last N decoded frames of clip c - 1 as floats (not quantised), scaled to
    [-1, 1]. Our pipeline's side of it is compared in test_denoiser_outputs_and_latents_of_every_step_match_memo (the
    denoiser's outputs of clip 1 depend on those past frames)."""
    portrait = golden["input.portrait"]
    assert torch.equal(golden["clip0.ref_pixels"], portrait.expand(1 + N, -1, -1, -1))
    for c in range(1, CLIPS):
        # the recording against itself (no code of ours): float32 rounding of x * 2 - 1 only
        assert rel_err(golden[f"clip{c}.ref_pixels"][1:], golden[f"clip{c - 1}.frames"][-N:] * 2 - 1)[1] < 1e-7, f"clip{c}.past"


def test_flow_match_euler_steps_match_memo(golden):
    """MEMO samples with diffusers' FlowMatchEulerDiscreteScheduler() (shift 1): t = 1000 * sigma, sigmas
    linspace(1, 1/1000, steps) then 0, x <- x + (sigma_next - sigma) * v, v = u + cfg (c - u). OUR scheduler (the one
    ``make_scheduler`` builds for the tiny-memo preset, with our guidance weights and input scaling) reproduces every
    recorded step of MEMO's run (made with diffusers 0.31.0), up to float32 rounding."""
    from emo_model.families import get_config
    from emo_model.sampling.settings import guidance_weights
    from emo_model.sampling.schedulers import init_noise_sigma, make_scheduler, scale_model_input

    preset = get_config("tiny-memo").preset
    weights = guidance_weights(SET["cfg"], SET["cfg"])
    assert set(weights) == {"uncond", "full"}  # MEMO's classic CFG: two branches
    for c in range(CLIPS):
        sched = make_scheduler(preset.sampler, preset.scheduler)
        sched.set_timesteps(STEPS)
        assert init_noise_sigma(sched) == 1.0
        latents = golden[f"clip{c}.noise"][None]
        for s, t in enumerate(sched.timesteps):
            assert float(golden[f"clip{c}.step{s}.timestep"]) == pytest.approx(float(t), abs=1e-4)
            if s == 0:  # the recorded noise itself
                assert torch.equal(golden[f"clip{c}.step{s}.input"][None], latents), f"clip{c} step{s}: input"
            else:  # our scheduler stepped it: equal to the recording release's step up to float32 rounding
                _check(f"clip{c}.step{s}.input", latents[0], golden[f"clip{c}.step{s}.input"])
            assert torch.equal(scale_model_input(sched, latents, t), latents)  # flow matching scales no input
            preds = {"uncond": golden[f"clip{c}.step{s}.pred_uncond"], "full": golden[f"clip{c}.step{s}.pred_cond"]}
            guided = sum(w * preds[name] for name, w in weights.items())
            _check(f"clip{c}.step{s}.guided", guided, golden[f"clip{c}.step{s}.guided"])
            latents = sched.step(guided[None], t, latents).prev_sample
            _check(f"clip{c}.step{s}.latents", latents[0], golden[f"clip{c}.step{s}.latents"])


def test_emotion_is_one_class_per_clip_and_null_for_the_unconditional_branch(golden):
    """MEMO feeds [9 (the null class), mode of the clip's frame labels] at every step (torch.mode: the smallest of
    the most frequent labels on CPU; clip 1's labels tie)."""
    labels = golden["input.emotion_labels"].long()
    for c in range(CLIPS):
        clip = labels[c * F : (c + 1) * F]
        counts = torch.bincount(clip)
        expected = int((counts == counts.max()).nonzero()[0])
        for s in range(STEPS):
            assert golden[f"clip{c}.step{s}.emotion"].long().tolist() == [META["emotion_classes"], expected]


def _reference_slots(meta: dict) -> tuple[dict[str, str], dict[str, str]]:
    """MEMO's ref_features[part][i][j] (stage ``clip0.reference.part.i.j``) -> our ReferenceNet bank key: the spatial
    transformer slots, and the resnet outputs of the levels without attention (down_blocks.3, up_blocks.0)."""
    attention, resnet = {}, {}
    for stage in meta["stages"]:
        if not stage.startswith("clip0.reference.") or stage.endswith(".timestep"):
            continue
        slot = stage.removeprefix("clip0.reference.")
        part, i, j = slot.split(".")
        if part == "mid":
            attention[slot] = f"mid_block.attentions.{j}"
        elif (part, i) in (("down", "3"), ("up", "0")):
            resnet[slot] = f"{part}_blocks.{i}.resnets.{j}"
        else:
            attention[slot] = f"{part}_blocks.{i}.attentions.{j}"
    return attention, resnet


REFERENCE_SLOTS, RESNET_SLOTS = _reference_slots(META)
PARTS = {"reference_net": "reference_unet.", "diffusion_net": "denoising_unet.", "image_proj": "imageproj.", "audio_proj": "audioproj."}


@pytest.fixture(scope="module")
def memo_folder(tmp_path_factory):
    """MEMO's four diffusers folders with the weights MEMO ran with (config.json as published for the projections: {})."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("memo")
    for sub in PARTS:
        (folder / sub).mkdir()
        (folder / sub / "config.json").write_text("{}")
        save_file(_weights(sub), str(folder / sub / "diffusion_pytorch_model.safetensors"))
    return folder


def _load(folder: Path, config_name: str, dtype: torch.dtype = torch.float32):
    from emo_model.weights.checkpoints import inspect_checkpoint

    ckpt = inspect_checkpoint(folder)
    assert (ckpt.format, ckpt.config.name) == ("memo", config_name) and ckpt.complete
    return ckpt.load(dtype=dtype)


@pytest.fixture(scope="module")
def model(memo_folder):
    return _load(memo_folder, "tiny-memo")


@pytest.fixture(scope="module")
def reference_net(model):
    return model.reference_unet


def _face_tokens(golden, c: int, rows: int, tiled: bool) -> torch.Tensor:
    u, cond = golden[f"clip{c}.identity_uncond"], golden[f"clip{c}.identity_cond"]
    per_copy = rows // 2
    return torch.stack([(u, cond)[j % 2 if tiled else j // per_copy] for j in range(rows)])


def _reference_rows(c: int, reference_net, golden, meta: dict = META) -> tuple[list[tuple[str, float, float]], dict]:
    """Every ReferenceNet slot of clip ``c`` with MEMO's tiled face tokens, and the rel err of two slots (stage -> rel)
    with each copy's own tokens instead (which must be far off)."""
    attention, resnet = _reference_slots(meta)
    latents = golden[f"clip{c}.ref_latents"].repeat(2, 1, 1, 1)
    rows = []
    with torch.no_grad():
        bank = reference_net(latents, _face_tokens(golden, c, latents.shape[0], tiled=True), plain_blocks=True)
        for slot, key in {**attention, **resnet}.items():
            rows.append(_row(f"clip{c}.reference.{slot}", bank[key], golden[f"clip{c}.reference.{slot}"]))
        del bank
        untiled = reference_net(latents, _face_tokens(golden, c, latents.shape[0], tiled=False))
    untiled_rel = {f"clip{c}.reference.{s}": rel_err(untiled[attention[s]], golden[f"clip{c}.reference.{s}"])[1]
                   for s in ("mid.0.0", "up.1.0")}
    return rows, untiled_rel


@pytest.mark.parametrize("c", range(CLIPS))
def test_reference_net_transformer_slots_match_memo(c, reference_net, golden):
    """MEMO runs its ReferenceNet on [portrait, N past frames] twice (one copy per guidance branch) with the face
    tokens TILED over the rows (``encoder_hidden_states.repeat``: row j gets [uncond, cond][j % 2]). Our ReferenceNet
    given that per-row context banks the same norm1 features (and the resnet outputs of the levels without
    attention); each copy's own tokens instead would be far off."""
    assert len(REFERENCE_SLOTS) == 10 and len(RESNET_SLOTS) == 3
    rows, untiled = _reference_rows(c, reference_net, golden)
    assert len(rows) == 13
    _rows_ok(rows)
    for stage, rel in untiled.items():
        _visible(rel, stage, "the face-token tiling")


def _generate(model, codec, golden, meta: dict = META, audio_windows: torch.Tensor | None = None):
    """Our pipeline's whole generation with MEMO's preset (the run's clip length, past frames and steps), MEMO's
    initial noise and frame emotion labels, on ``audio_windows`` (default: MEMO's). Records the denoiser's input and
    output (both branches) at every call, and the guided velocity and latents of every scheduler step."""
    from emo_model.sampling.pipeline import EMOPipeline
    from emo_model.sampling.settings import SamplingSettings

    st = meta["settings"]
    pipe = EMOPipeline(model, codec)
    portrait = (golden["input.portrait"].permute(1, 2, 0) + 1) / 2
    reference = pipe.encode_reference(portrait, size=st["size"], identity_embedding=golden["input.face_emb"])
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    steps: list[tuple[torch.Tensor, torch.Tensor]] = []
    conditions: list[tuple] = []  # (timestep, Conditioning) of every call: its memory dict is the one the run keeps

    def record(module, args, out):
        calls.append((args[0][0].clone(), out.clone()))
        conditions.append((args[1], args[2]))

    hook = model.register_forward_hook(record)
    settings = SamplingSettings.from_preset(model.config.preset, emotion=golden["input.emotion_labels"].long().tolist(),
                                            frames_per_clip=st["frames_per_clip"], motion_frames=st["past_frames"],
                                            steps=st["steps"], cfg=st["cfg"], audio_cfg=st["cfg"])
    assert settings.sampler == "flow_euler" and settings.cfg == settings.audio_cfg == st["cfg"]
    assert SamplingSettings.from_preset(model.config.preset).cfg == 3.5  # the preset's default: MEMO's cfg_scale
    noise = torch.cat([golden[f"clip{c}.noise"] for c in range(st["clips"])], dim=1)
    try:
        windows = golden["audio.windows"] if audio_windows is None else audio_windows
        with scheduler_steps(lambda model_output, result: steps.append((model_output[0].clone(), result.prev_sample[0].clone()))):
            video = pipe.generate_frames(reference, windows, settings=settings, noise=noise)
    finally:
        hook.remove()
    assert len(calls) == len(steps) == st["clips"] * st["steps"]  # one batched call (both branches) per step
    return calls, steps, video, conditions


def _generation_rows(c: int, generation, golden, meta: dict = META) -> list[tuple[str, float, float]]:
    """Both guidance branches at every step of clip ``c``; the denoiser's input at step s is the latents after step
    s - 1 (step 0: MEMO's noise); the guided velocity and latents of every step."""
    calls, steps = generation[0], generation[1]
    n = meta["settings"]["steps"]
    rows = []
    for s in range(n):
        x, out = calls[c * n + s]
        guided, latents = steps[c * n + s]
        rows += [_row(f"clip{c}.step{s}.input", x, golden[f"clip{c}.step{s}.input"]),
                 _row(f"clip{c}.step{s}.pred_uncond", out[0], golden[f"clip{c}.step{s}.pred_uncond"]),
                 _row(f"clip{c}.step{s}.pred_cond", out[1], golden[f"clip{c}.step{s}.pred_cond"]),
                 _row(f"clip{c}.step{s}.guided", guided, golden[f"clip{c}.step{s}.guided"]),
                 _row(f"clip{c}.step{s}.latents", latents, golden[f"clip{c}.step{s}.latents"])]
    return rows


def _video_row(generation, golden) -> tuple[str, float, float]:
    video = generation[2]
    assert video.shape == (golden["video"].shape[0], *golden["video"].shape[2:], 3)
    return _row("video", video.permute(0, 3, 1, 2), golden["video"])


@pytest.fixture(scope="module")
def generation(model, codec, golden):
    return _generate(model, codec, golden)


@pytest.fixture(scope="module")
def generation64(memo_folder, golden):
    """The same generation with our model and VAE in float64 (the scheduler keeps float32 latents, as in fp32): our
    code's arithmetic without its own float32 rounding (see test_denoiser_outputs_and_latents_of_every_step_match_memo)."""
    model64 = _load(memo_folder, "tiny-memo", torch.float64)
    return model64, _generate(model64, _codec(dtype=torch.float64), golden)


@pytest.mark.parametrize("c", range(CLIPS))
def test_denoiser_outputs_and_latents_of_every_step_match_memo(c, generation64, golden):
    """Both guidance branches at every step of every clip; the denoiser's input at step s is the latents after step
    s - 1 (step 0: MEMO's noise), with the memory carried from clip to clip.

    Our code runs in float64 here: the hard case is chaotic in float32 (docs/parity.md, MEMO: at the 1x1 levels of the
    tiny UNet the memory temporal modules' GroupNorm of 8 values amplifies a rounding difference about 70 times per
    call, and the clip chain compounds it), so which float32 run drifts from the exact result is a matter of rounding
    luck. MEMO's float32 stays within the standard of our exact run at every stage; our float32 run's first clip is
    checked by test_first_clip_in_float32_matches_memo."""
    _rows_ok(_generation_rows(c, generation64[1], golden))


def test_first_clip_in_float32_matches_memo(generation, golden):
    """Our float32 run, clip 0 (the portrait as past frames, before the clip chain): every stage within the standard."""
    _rows_ok(_generation_rows(0, generation, golden))


@pytest.mark.skipif(not os.environ.get("EMO_PARITY_MEMO_DIR"), reason="opt-in: a fixture whose clip chain is not chaotic in float32")
@pytest.mark.parametrize("c", range(CLIPS))
def test_every_clip_in_float32_matches_memo(c, generation, golden):
    """Our float32 run (what a user runs), every clip, judged by the standard directly. At 128 px the tiny UNet's lowest
    level is 2x2, not 1x1, and the clip chain is not chaotic: this passes at every stage (docs/parity.md, MEMO)."""
    _rows_ok(_generation_rows(c, generation, golden))
    if c == CLIPS - 1:
        _rows_ok([_video_row(generation, golden)])


def test_whole_video_matches_memo(generation64, golden):
    assert generation64[1][2].shape[0] == CLIPS * F
    _rows_ok([_video_row(generation64[1], golden)])


def _memory_and_emotion_rel(model, golden, generation, meta: dict = META) -> dict[str, float]:
    """The last clip's first denoiser call (conditional branch) replayed on our run's own conditioning, after the run:
    as it was (the memory as folded at that call, nothing folded after it: must match MEMO), with a fresh memory (folded
    from that clip's past frames only), and with the null emotion class in the conditional branch (memory as it was).
    Returns the rel err of each against MEMO's output."""
    import dataclasses

    n, c = meta["settings"]["steps"], meta["settings"]["clips"] - 1
    t, cond = generation[3][c * n]  # the last clip, step 0
    sample = golden[f"clip{c}.step0.input"][None].expand(2, -1, -1, -1, -1)
    null = torch.full_like(cond.emotion, meta["emotion_classes"])
    with torch.no_grad():
        out = {
            "replayed": model(sample, t, dataclasses.replace(cond, update_memory=False)),
            "fresh memory": model(sample, t, dataclasses.replace(cond, memory={}, update_memory=True)),
            "null emotion": model(sample, t, dataclasses.replace(cond, emotion=null, update_memory=False)),
        }
    gold = golden[f"clip{c}.step0.pred_cond"]
    return {name: rel_err(o[1], gold)[1] for name, o in out.items()}


def _assert_memory_and_emotion_visible(rel: dict[str, float], fix: Path = FIX, clips: int = CLIPS) -> None:
    stage = f"clip{clips - 1}.step0.pred_cond"
    _rows_ok([(stage, float("nan"), rel["replayed"])], fix)  # (max abs not measured for the replay)
    _visible(rel["fresh memory"], stage, "a fresh memory at the last clip", fix)
    _visible(rel["null emotion"], stage, "the emotion class", fix)


def test_memory_and_emotion_are_visible_in_the_comparison(golden, generation64):
    """Without the memory carried over from the earlier clips (a fresh memory at the last clip), or with the null
    emotion in the conditional branch (and the right memory), the last clip is far from MEMO's: the test would see
    either mistake (our float64 run, as test_denoiser_outputs_and_latents_of_every_step_match_memo)."""
    rel = _memory_and_emotion_rel(generation64[0], golden, generation64[1])
    print(rel)
    _assert_memory_and_emotion_visible(rel)


FULL_DIR = os.environ.get("EMO_PARITY_FULL_DIR")


@pytest.mark.skipif(not FULL_DIR, reason="opt-in: EMO_PARITY_FULL_DIR=<folder written by memo_original.py --pipeline WORK --full>")
def test_full_size_matches_memo():
    """MEMO at its published shapes (``memo_original.py --full``: SD1.5 UNets, wav2vec2-base-sized audio, 768-wide
    tokens, hash-random weights): the folder's ``checkpoint/`` loaded by our loader as a user's memo/ folder (config
    ``memo``), every stage of the 2-clip generation compared with the tiny test's helpers (the standard: max(1e-4, 3 x
    the floor.json tools/parity/floor.py wrote in the folder; without it the test fails). Prints the table of
    docs/parity.md (``pytest -s``)."""
    from safetensors import safe_open

    fix = Path(FULL_DIR)
    load_floor(fix)  # before the 10 GB digest check: no floor, no standard
    meta = json.loads((fix / "meta.json").read_text())["pipeline"]
    st = meta["settings"]
    assert st.get("full") and meta.get("checkpoint"), f"{fix} was not written by memo_original.py --full"
    folder = fix / meta["checkpoint"]
    common = parity_common()
    for sub in PARTS:  # the files are the ones MEMO ran with
        w = meta["weights"][sub]
        with safe_open(str(folder / sub / "diffusion_pytorch_model.safetensors"), "pt") as fh:
            assert {k: list(fh.get_slice(k).get_shape()) for k in fh.keys()} == dict(w["spec"]), f"{sub}: another layout"  # noqa: SIM118
            assert common.digest((k, fh.get_tensor(k)) for k, _ in w["spec"]) == w["digest"], f"{sub}: not the weights MEMO ran with"
    golden = load_file(fix / "stages.safetensors")
    model = _load(folder, "memo")
    codec = _codec(meta)
    clips = st["clips"]
    table: list[tuple[str, float, float]] = []
    with torch.no_grad():
        audio = _encode_audio(golden, meta)
        assert audio.num_frames == meta["audio_length"] and audio.features.shape[0] == meta["padded_frames"]
        table.append(_row("audio.windows", audio.features, golden["audio.windows"]))
        emb = golden["input.face_emb"][None]
        for c in range(clips):
            windows = golden["audio.windows"][c * st["frames_per_clip"] : (c + 1) * st["frames_per_clip"]]
            table.append(_row(f"clip{c}.audio_tokens", model.audio_tokens(windows)[0], golden[f"clip{c}.audio_tokens"]))
            table.append(_row(f"clip{c}.identity_cond", model.identity_tokens(emb)[0], golden[f"clip{c}.identity_cond"]))
            table.append(_row(f"clip{c}.identity_uncond", model.identity_tokens(torch.zeros_like(emb))[0], golden[f"clip{c}.identity_uncond"]))
            table += _vae_rows(c, codec, golden, st["steps"])
        untiled: dict[str, float] = {}
        for c in range(clips):
            rows, far = _reference_rows(c, model.reference_unet, golden, meta)
            table += rows
            untiled.update(far)
    generation = _generate(model, codec, golden, meta, audio_windows=audio.features)
    for c in range(clips):
        table += _generation_rows(c, generation, golden, meta)
    table.append(_video_row(generation, golden))
    ablation = _memory_and_emotion_rel(model, golden, generation, meta)
    print("\n| stage | max abs | rel err | original's floor |\n|---|---|---|---|")
    for name, mx, rel in table:
        print(f"| {name} | {mx:.1e} | {rel:.1e} | {tolerance(fix, name, base=0) / 3:.1e} |")
    print(f"ReferenceNet with each copy's own face tokens (must be far): rel err >= {min(untiled.values()):.2e}")
    print("clip 1 step 0, conditional branch, replayed on our conditioning:", {k: f"{v:.2e}" for k, v in ablation.items()})
    _rows_ok(table, fix)
    _assert_memory_and_emotion_visible(ablation, fix, clips)
    for stage, rel in untiled.items():
        _visible(rel, stage, "the face-token tiling (full size)", fix)


# ---- half precision: MEMO's own weight_dtype (its configs/inference.yaml: bf16) -----------------------------------

FIX16 = ROOT / "tests" / "parity" / "memo_bf16"
HALF_AUDIO_TOKENS = 2.0**-7  # two bf16 roundings: MEMO projects the audio in float32 (see _half_rows), we in bf16


@pytest.fixture(scope="module")
def half():
    """MEMO's bf16 run (``memo_original.py --pipeline WORK --dtype bf16``) and ours on the same four folders, with our
    model and VAE loaded in bf16 (what ``--dtype bf16`` / the loader's dtype gives) and in float64 (the exact result
    of the same arithmetic; the fp32 fixture shows it is MEMO's within the standard)."""
    import tempfile

    from safetensors.torch import save_file

    meta = json.loads((FIX16 / "meta.json").read_text())["pipeline"]
    golden = load_file(FIX16 / "stages.safetensors")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for sub in PARTS:
            (folder / sub).mkdir()
            (folder / sub / "config.json").write_text("{}")
            save_file(_weights(sub, meta), str(folder / sub / "diffusion_pytorch_model.safetensors"))
        for name, dtype in (("bf16", torch.bfloat16), ("exact", torch.float64)):
            model = _load(folder, "tiny-memo", dtype)
            assert model.dtype == dtype
            rows[name] = _half_rows(model, _codec(meta, dtype), golden, meta)
    return meta, golden, rows


def _half_rows(model, codec, golden, meta) -> dict[str, torch.Tensor]:
    st = meta["settings"]
    f, n = st["frames_per_clip"], st["steps"]
    out = {}
    with torch.no_grad():
        for c in range(st["clips"]):
            out[f"clip{c}.audio_tokens"] = model.audio_tokens(golden["audio.windows"][c * f : (c + 1) * f])[0]
            emb = golden["input.face_emb"][None]
            out[f"clip{c}.identity_cond"] = model.identity_tokens(emb)[0]
            out[f"clip{c}.identity_uncond"] = model.identity_tokens(torch.zeros_like(emb))[0]
            out[f"clip{c}.ref_latents"] = codec.encode(((golden[f"clip{c}.ref_pixels"] + 1) / 2).permute(0, 2, 3, 1))
            final = golden[f"clip{c}.step{n - 1}.latents"].transpose(0, 1)
            out[f"clip{c}.frames"] = codec.decode(final).permute(0, 3, 1, 2)
    calls, steps, video, _ = _generate(model, codec, golden, meta)
    for c in range(st["clips"]):
        for s in range(n):
            (x, pred), (guided, latents) = calls[c * n + s], steps[c * n + s]
            out.update({f"clip{c}.step{s}.input": x, f"clip{c}.step{s}.pred_uncond": pred[0],
                        f"clip{c}.step{s}.pred_cond": pred[1], f"clip{c}.step{s}.guided": guided,
                        f"clip{c}.step{s}.latents": latents})
    out["video"] = video.permute(0, 3, 1, 2)
    return {k: v.double() for k, v in out.items()}


def test_half_precision_fixture_is_memos_dtype_with_its_floor(half):
    meta, golden, _ = half
    assert meta["settings"]["weight_dtype"] == "bf16"  # configs/inference.yaml of the pinned commit
    floor = load_floor(FIX16)
    missing = sorted(set(golden) - set(floor["files"]["stages.safetensors"]))
    assert not missing, f"floor.json has no floor for {missing[:5]}: regenerate memo_bf16 with tools/parity/floor.py"


def test_half_precision_matches_memo_within_its_own_rounding(half):
    """Our bf16 run against MEMO's bf16 run, every stage (``pytest -s`` prints the table of docs/parity.md).

    MEMO's bf16 CPU run does not move when its thread count changes (floor.json: 0 at every bf16 stage), so the
    standard would ask for bit-equality with another implementation's bf16 roundings. The noise of a bf16 run is its
    distance from the exact result instead: a stage passes when ours is within max(standard, MEMO's own bf16 error
    there), i.e. our half run is no further from MEMO's than MEMO's half run is from the exact one (measured: 0 to 0.8
    of it). Our float32 run in place of the bf16 one fails it (at clip0.step0.guided: 1.07e-1 against 1.06e-1), but at
    this size bf16's own noise is 7 to 37 % of a denoiser output, so only mistakes larger than that show here; the
    structure is compared by the fp32 tests above. The audio tokens are the exception: MEMO's audio projection stays
    float32 (it is not part of the pipeline its ``.to(weight_dtype)`` casts), ours runs in the model's dtype, so they
    differ by bf16 rounding (bound: 2^-7)."""
    _, golden, rows = half
    table, bad = [], []
    for stage, ours in rows["bf16"].items():
        gold = golden[stage].double()
        own = rel_err(gold, rows["exact"][stage])[1]  # MEMO's bf16 run against the exact result
        mx, rel = rel_err(ours, gold)
        allowed = HALF_AUDIO_TOKENS if stage.endswith("audio_tokens") else max(tolerance(FIX16, stage), own)
        table.append(f"| {stage} | {rel:.1e} | {own:.1e} | {rel_err(ours, rows['exact'][stage])[1]:.1e} |")
        if not rel <= allowed:
            bad.append(f"{stage}: rel err {rel:.2e} (max abs {mx:.2e}), allowed {allowed:.2e}")
    print("\n| stage | ours bf16 vs MEMO bf16 | MEMO bf16 vs exact | ours bf16 vs exact |\n|---|---|---|---|")
    print("\n".join(table))
    assert not bad, "our bf16 run differs from MEMO's bf16 run:\n" + "\n".join(bad)
