"""Family parity, EchoMimic v1: our pipeline against golden stages recorded from the ORIGINAL code.

``tests/parity/echomimic/`` was made by ``tools/parity/echomimic_original.py`` (the command, commit and
package versions are in its meta.json): EchoMimic's own classes at a tiny size, seeded random weights,
its ``Audio2VideoPipeline`` run for 14 frames (3 context windows of 8, overlap 2), 3 DDIM steps, CFG 2.5,
and a second run through the ``_acc`` pipeline without CFG. Here the same weights are written again
in EchoMimic's four-file format, loaded with our loader (strict), and every recorded stage is compared
on the same inputs and initial noise: rel err = ||ours - original|| / ||original|| < 1e-4 in fp32.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import parity_common, rel_err
from safetensors.torch import load_file

from emo_model.audio import PreparedAudio
from emo_model.audio_encoders import WhisperAudioEncoder
from emo_model.pipeline import EMOPipeline, SamplingSettings, _Run
from emo_model.vae import DiffusersVAE
from emo_model.weights import inspect_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "parity" / "echomimic"
TOL = 1e-4
SKIP = ("audio.whisper_steps", "audio_long.rows")  # intermediate (covered by the chunks) / an index


_common = parity_common


def load_golden(folder: Path):
    return json.loads((folder / "meta.json").read_text()), load_file(folder / "stages.safetensors")


def write_files(folder: Path, meta: dict, out: Path) -> Path:
    """EchoMimic's denoising_unet.pth / motion_module.pth / reference_unet.pth / face_locator.pth and the
    whisper .pt, regenerated from the recipe and checked against the digests the original side recorded
    (a full-size fixture keeps the harness's files in ``checkpoint/`` and ``whisper_tiny_random.pt``)."""
    common = _common()
    if (folder / "checkpoint").is_dir():
        return folder
    (out / "checkpoint").mkdir()
    buffers = load_file(folder / "buffers.safetensors")
    for name, spec in meta["checkpoint"]["files"].items():
        hashed = common.hashed_state_dict([(k, shape) for k, shape, src in spec["keys"] if src == "hash"], spec["seed"])
        state = {k: hashed[k] if src == "hash" else buffers[f"{name}:{k}"] for k, _, src in spec["keys"]}
        assert common.digest(state) == spec["sha256"], f"{name}: regenerated weights differ from the original run's"
        torch.save(state, out / "checkpoint" / name)
    w = meta["whisper"]
    whisper = common.hashed_state_dict([tuple(x) for x in w["spec"]], w["seed"])
    assert common.digest(whisper) == w["sha256"], "whisper weights differ from the original run's"
    torch.save({"dims": w["dims"], "model_state_dict": whisper}, out / "whisper_tiny_random.pt")
    return out


def load_model(files: Path, config_name: str):
    ck = inspect_checkpoint(files / "checkpoint")
    assert ck.format == "echomimic-v1" and ck.config.name == config_name, (ck.format, ck.config.name)
    assert ck.complete and ck.problem() is None, ck.problem()
    return ck.load(device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def golden():
    return load_golden(FIXTURE)


@pytest.fixture(scope="module")
def files(golden, tmp_path_factory):
    return write_files(FIXTURE, golden[0], tmp_path_factory.mktemp("echomimic"))


@pytest.fixture(scope="module")
def model(files):
    return load_model(files, "tiny-echomimic")


class Recorder:
    """Our stages under the original's names: denoiser calls, guided predictions, latents per step."""

    def __init__(self, prefix: str, model):
        self.prefix, self.model, self.stages, self.step, self.call = prefix, model, {}, 0, 0

    def __enter__(self):
        original_step = _Run._step
        rec = self

        def step(run, pred, t, latents, generator):
            if rec.step == 0:
                rec.stages[rec.prefix + "initial_latents"] = latents.clone()
            out = original_step(run, pred, t, latents, generator)
            rec.stages[f"{rec.prefix}step{rec.step}.guided"] = pred.clone()
            rec.stages[f"{rec.prefix}step{rec.step}.latents"] = out.clone()
            rec.stages[rec.prefix + "final_latents"] = out.clone()
            rec.step, rec.call = rec.step + 1, 0
            return out

        def on_forward(module, args, output):
            rec.stages[f"{rec.prefix}step{rec.step}.call{rec.call}.pred"] = output.clone()
            rec.call += 1

        self._patch = pytest.MonkeyPatch()
        self._patch.setattr(_Run, "_step", step)
        self._handle = self.model.register_forward_hook(on_forward)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        self._patch.undo()


def run_ours(folder: Path, meta: dict, gold: dict, files: Path, model) -> dict[str, torch.Tensor]:
    """Our side on the fixture's inputs: every stage under the original's name."""
    s = meta["settings"]
    stages = {}
    audio = PreparedAudio(waveform=gold["input.waveform"], num_frames=s["frames"], fps=float(s["fps"]))
    encoder = WhisperAudioEncoder.from_checkpoint(files / "whisper_tiny_random.pt", model.config.audio)
    features = encoder.encode(audio)
    stages["audio.chunks"] = features
    if "audio_long.chunks" in gold:  # 31.5 s: two whisper segments (see the harness)
        n = meta["audio_long"]["frames"]
        wave = torch.from_numpy(_common().synthetic_speech(round(n * 16000 / s["fps"])))
        long = encoder.encode(PreparedAudio(waveform=wave, num_frames=n, fps=float(s["fps"])))
        stages["audio_long.chunks"] = long[gold["audio_long.rows"]]

    from diffusers import AutoencoderKL

    codec = DiffusersVAE(AutoencoderKL.from_pretrained(folder / "vae").eval())
    pipe = EMOPipeline(model, codec)
    ref = pipe.encode_reference(gold["input.portrait"].float() / 255.0, size=s["size"])
    stages["reference.latent"] = ref.latent
    for key, tokens in ref.bank.tokens.items():
        stages["reference.bank." + key] = tokens
    mask = gold["input.face_mask"]
    stages["face_locator"] = model.face_features(mask[None])

    noise = gold["input.noise"][0]  # [C, F, h, w], before EchoMimic's clamp
    for name, run in meta["runs"].items():
        prefix = "" if name == "main" else name + "."
        cfg = run["guidance_scale"]
        settings = SamplingSettings.from_preset(
            model.config.preset, steps=s["steps"], cfg=cfg, audio_cfg=cfg, frames_per_clip=s["context_frames"],
            context_overlap=s["context_overlap"],
        )
        with Recorder(prefix, model) as rec:
            frames = pipe.generate_frames(ref, features, settings=settings, face_mask=mask, noise=noise)
        stages.update(rec.stages)
        stages[prefix + "frames"] = frames.permute(3, 0, 1, 2)[None]  # [1, 3, F, H, W] as the original
    return stages


def compare(stage: str, ours: dict, gold: dict) -> tuple[float, float]:
    original = gold[stage]
    if stage == "audio.chunks":
        original = original[: ours[stage].shape[0]]  # EchoMimic makes a few chunks past the video's end
    if stage == "face_locator":
        original = original[:, :, 0]  # EchoMimic's [1, C, 1, h, w] (one inflated frame)
    assert stage in ours, f"stage {stage}: not produced by our pipeline"
    return rel_err(ours[stage], original)


@pytest.fixture(scope="module")
def ours(golden, files, model):
    """Run our side once; every test below checks one stage of it."""
    return run_ours(FIXTURE, *golden, files, model)


def _stage_names():
    meta = json.loads((FIXTURE / "meta.json").read_text())
    return [k for k in meta["stages"] if k not in SKIP and not k.startswith("input.")]


@pytest.mark.parametrize("stage", _stage_names())
def test_stage_matches_the_original(stage, golden, ours):
    max_abs, rel = compare(stage, ours, golden[1])
    assert rel < TOL, f"stage {stage}: rel err {rel:.3e} (max abs {max_abs:.3e}) vs EchoMimic's original code"


def test_fixture_sanity_covers_two_windows_per_step_and_cfg(golden):
    """Fixture sanity (reads the fixture only; it checks the recording, not our code): the original's run used guidance
    and at least two context windows per step, so the comparisons of the other tests exercise both."""
    meta, gold = golden
    main = meta["runs"]["main"]
    assert main["guidance_scale"] > 1 and len(main["context_queue"]) >= 2
    assert gold["step0.call0.pred"].shape[0] == 2  # unconditional + conditional branches
    assert meta["original"]["commit"].startswith("a53e9704")


def test_context_windows_are_the_ones_echomimic_ran(golden):
    """Every denoiser call's frames, as the original harness read them off the latents, from our schedule."""
    from emo_model.clip_planner import context_schedule

    meta, _ = golden
    s, q = meta["settings"], _tiny_quirks()
    plan = context_schedule(s["frames"], s["context_frames"], s["context_overlap"], schedule=q.context_schedule,
                            shift_per_step=q.context_shift_per_step)
    for run in meta["runs"].values():
        ours = [[step, frames] for step in range(s["steps"]) for frames, _ in plan(step)]
        assert ours == [list(x) for x in run["windows_per_call"]]


def test_context_schedules_ramp_is_unchanged_and_unknown_names_are_refused():
    from emo_model.clip_planner import context_schedule, plan_windows, window_weights
    from emo_model.configs import get_config

    plan = context_schedule(20, 8, 3)  # the default: fixed windows with ramps, no shift
    for step in (0, 5):
        got = plan(step)
        windows = plan_windows(20, 8, 3)
        assert [f for f, _ in got] == [list(w) for w in windows]
        assert all(torch.equal(b, window_weights(len(w), 3)) for (_, b), w in zip(got, windows))
    assert [f for f, _ in context_schedule(5, 8, 2, schedule="uniform", shift_per_step=2)(1)] == [[2, 3, 4, 0, 1]]
    with pytest.raises(ValueError, match="ramp or uniform"):
        context_schedule(20, 8, 3, schedule="sliding")
    cfg = get_config("tiny-echomimic")
    cfg.preset.quirks.context_schedule = "sliding"
    with pytest.raises(ValueError, match="context_schedule must be ramp or uniform"):
        cfg.validate()


def _tiny_quirks():
    from emo_model.configs import get_config

    return get_config("tiny-echomimic").preset.quirks


@pytest.mark.skipif(not os.environ.get("EMO_PARITY_FULL_DIR"), reason="set EMO_PARITY_FULL_DIR to a full-size fixture (tools/parity/README.md)")
def test_full_size_matches_the_original(tmp_path):
    """Opt-in: ``echomimic_original.py --full`` output (SD1.5 / whisper-tiny shapes, ~10 GB RAM): the first
    step's denoiser outputs within 1e-4, every later stage within 1e-3."""
    folder = Path(os.environ["EMO_PARITY_FULL_DIR"])
    meta, gold = load_golden(folder)
    files = write_files(folder, meta, tmp_path)
    model = load_model(files, "echomimic-v1")
    ours = run_ours(folder, meta, gold, files, model)
    failures = []
    for stage in meta["stages"]:
        if stage.startswith("input.") or stage in SKIP:
            continue
        max_abs, rel = compare(stage, ours, gold)
        tol = 1e-4 if stage.startswith(("step0.", "acc.step0.", "reference.", "face_locator", "audio.")) else 1e-3
        print(f"| EchoMimic v1 full | {stage} | {max_abs:.1e} | {rel:.1e} |")
        if not rel < tol:
            failures.append(f"{stage}: rel err {rel:.3e} (tol {tol:g})")
    assert not failures, "; ".join(failures)

