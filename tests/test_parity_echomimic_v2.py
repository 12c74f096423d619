"""Family parity, EchoMimic v2: our pipeline against golden stages recorded from the ORIGINAL code.

``parity/echomimic_v2/`` was made by ``tools/parity/floor.py -- ... tools/parity/echomimic_v2_original.py`` (command,
commit a312dec0 and package versions in meta.json; floor.json: the same run with 2 and 1 threads): EchoMimic v2's own
classes at a tiny size with hashed random weights, a pose sequence drawn by its own ``draw_pose_select_v2``, its
``EchoMimicV2Pipeline`` as infer.py calls it. The hard case of issue 24: 16 frames in windows of 6 with overlap 2
(4 windows per step, one wrapping around the end, shifting 3 frames per step), 2 DDIM steps, CFG 4.5, fp32.

The weights are written again in the original's four-file format, recognised and loaded by our loader (strict), and
every recorded stage is compared on the same inputs and initial noise: rel err <= max(1e-4, 3 x the original's floor)
(tests/parity_floor.py). Each of the family's sampling quirks, switched off, moves the frames past that bound. The
fixture also holds the same run of the original in float64 (``--float64``: float64.safetensors, the guided prediction
and latents per step): ours stays within 3 x the original's own float32 distance from that exact result.
The ``_acc`` pipeline and half precision: tests/test_parity_echomimic_v2_acc.py, tests/test_parity_echomimic_v2_fp16.py.
The last two tests cover ``bench --against-original echomimic-v2``'s side of ours and its harness command.
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

from emo_model.audio.signal import PreparedAudio
from emo_model.audio.whisper import WhisperAudioEncoder
from emo_model.network.vae import DiffusersVAE
from emo_model.sampling.clip_loop import _Run
from emo_model.sampling.pipeline import EMOPipeline
from emo_model.sampling.settings import SamplingSettings
from emo_model.weights.checkpoints import inspect_checkpoint
from tests import parity_floor

# another fixture made the same way (e.g. a full-size or longer run outside the repository): EMO_PARITY_ECHOMIMIC_V2_DIR
FIXTURE = Path(os.environ.get("EMO_PARITY_ECHOMIMIC_V2_DIR") or Path(__file__).parent / "parity" / "echomimic_v2")
SKIP = ()

pytestmark = pytest.mark.skipif(not (FIXTURE / "meta.json").is_file(), reason="no EchoMimic v2 fixture")


def assets(fixture: Path, meta: dict) -> Path:
    """Where ``fixture``'s buffers.safetensors and vae/ live (the harness's --assets: another fixture of the same weights)."""
    return fixture.parent / meta["assets"] if meta.get("assets") else fixture


def write_files(fixture: Path, meta: dict, out: Path, names: dict[str, str] | None = None) -> Path:
    """The original's four .pth files and the whisper .pt, regenerated from the recipe and checked by digest
    (``names``: a file written under another name, e.g. infer_acc.yaml's ``denoising_unet_acc.pth``). A full-size fixture
    (``--full``) keeps the harness's own files in ``checkpoint/`` and ``whisper_tiny_random.pt``: used as they are."""
    if names is None and (fixture / "checkpoint").is_dir() and (fixture / "whisper_tiny_random.pt").is_file():
        return fixture
    common = parity_common()
    (out / "checkpoint").mkdir(parents=True)
    buffers = load_file(assets(fixture, meta) / "buffers.safetensors")
    for name, spec in meta["checkpoint"]["files"].items():
        hashed = common.hashed_state_dict([(k, shape) for k, shape, src in spec["keys"] if src == "hash"], spec["seed"])
        state = {k: hashed[k] if src == "hash" else buffers[f"{name}:{k}"] for k, _, src in spec["keys"]}
        assert common.digest(state) == spec["sha256"], f"{name}: regenerated weights differ from the original run's"
        torch.save(state, out / "checkpoint" / (names or {}).get(name, name))
    w = meta["whisper"]
    whisper = common.hashed_state_dict([tuple(x) for x in w["spec"]], w["seed"])
    assert common.digest(whisper) == w["sha256"], "whisper weights differ from the original run's"
    torch.save({"dims": w["dims"], "model_state_dict": whisper}, out / "whisper_tiny_random.pt")
    return out


class Recorder:
    """Our stages under the original's names: denoiser calls, guided predictions, latents per step."""

    def __init__(self, model):
        self.model, self.stages, self.step, self.call = model, {}, 0, 0

    def __enter__(self):
        original_step, rec = _Run._step, self

        def step(run, pred, t, latents, generator):
            if rec.step == 0:
                rec.stages["initial_latents"] = latents.clone()
            out = original_step(run, pred, t, latents, generator)
            rec.stages[f"step{rec.step}.guided"] = pred.clone()
            rec.stages[f"step{rec.step}.latents"] = rec.stages["final_latents"] = out.clone()
            rec.step, rec.call = rec.step + 1, 0
            return out

        def on_forward(module, args, output):
            rec.stages[f"step{rec.step}.call{rec.call}.pred"] = output.clone()
            rec.call += 1

        self._patch = pytest.MonkeyPatch()
        self._patch.setattr(_Run, "_step", step)
        self._handle = self.model.register_forward_hook(on_forward)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        self._patch.undo()


def load_setup(fixture: Path, folder: Path, config: str = "tiny-echomimic-v2", names: dict[str, str] | None = None,
               dtype: torch.dtype = torch.float32):
    """The fixture's files written to ``folder``, recognised and loaded by our loader (``config``: the name it must give),
    in ``dtype`` as Session.load gives it (the audio encoder fp32 whatever the model's dtype); our whisper features of the
    fixture's waveform, our reference encoding, the original's pose drawing."""
    meta = json.loads((fixture / "meta.json").read_text())
    gold = load_file(fixture / "stages.safetensors")
    files = write_files(fixture, meta, folder, names)
    ck = inspect_checkpoint(files / "checkpoint")
    assert (ck.family, ck.config.name) == ("echomimic-v2", config) and ck.problem() is None, (ck.config.name, ck.problem())
    model = ck.load(device="cpu", dtype=dtype)
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(assets(fixture, meta) / "vae").eval().to(dtype)
    pipe = EMOPipeline(model, DiffusersVAE(vae))
    s = meta["settings"]
    encoder = WhisperAudioEncoder.from_checkpoint(files / "whisper_tiny_random.pt", model.config.audio)
    features = encoder.encode(PreparedAudio(waveform=gold["input.waveform"], num_frames=s["frames"], fps=float(s["fps"])))
    ref = pipe.encode_reference(gold["input.portrait"].float() / 255.0, size=s["size"])
    poses = gold["input.poses"][0].transpose(0, 1).float() / 255.0  # [F, 3, H, W], the original's drawing
    return meta, gold, pipe, ref, features, poses


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return load_setup(FIXTURE, tmp_path_factory.mktemp("echomimic_v2"))


def run_ours(setup, features: torch.Tensor | None = None, **quirks) -> dict[str, torch.Tensor]:
    """Our generation on the fixture's inputs and initial noise (``features``: other audio features than ours;
    ``quirks``: preset quirks changed for this run), the stages under the original's names."""
    meta, gold, pipe, ref, our_features, poses = setup
    features = our_features if features is None else features
    s = meta["settings"]
    model = pipe.model
    original_config = model.config
    if quirks:
        model.config = original_config.replace(preset=dataclasses.replace(
            original_config.preset, quirks=dataclasses.replace(original_config.preset.quirks, **quirks)))
    try:
        settings = SamplingSettings.from_preset(model.config.preset, steps=s["steps"], cfg=s["guidance_scale"],
                                                audio_cfg=s["guidance_scale"], frames_per_clip=s["context_frames"],
                                                context_overlap=s["context_overlap"])
        with Recorder(model) as rec:
            frames = pipe.generate_frames(ref, features, settings=settings, pose_frames=poses, noise=gold["input.noise"][0])
    finally:
        model.config = original_config
    stages = dict(rec.stages)
    stages["frames"] = frames.permute(3, 0, 1, 2)[None]  # [1, 3, F, H, W] as the original
    stages["audio.chunks"] = features
    stages["pose_encoder"] = model.face_features(poses).transpose(0, 1)[None]
    stages["reference.latent"] = ref.latent
    for key, tokens in ref.bank.tokens.items():
        stages["reference.bank." + key] = tokens
    return stages


@pytest.fixture(scope="module")
def ours(setup):
    return run_ours(setup)


def compare(stage: str, ours: dict, gold: dict) -> float:
    """rel err of our stage against the original's (conftest.rel_err gives (max abs, rel))."""
    original = gold[stage]
    assert stage in ours, f"stage {stage}: not produced by our pipeline"
    return rel_err(ours[stage], original)[1]


def test_the_fixture_is_the_hard_case(setup):
    meta = setup[0]
    s = meta["settings"]
    assert s["guidance_scale"] >= 4 and len(meta["context_queue"]) >= 3
    assert any(w[0] > w[-1] for w in meta["context_queue"]), "no window wraps around the end"
    assert meta["original"]["commit"].startswith("a312dec0")


def test_every_stage_is_within_the_standard(setup, ours):
    gold = setup[1]
    stages = [k for k in gold if not k.startswith("input.") and k not in SKIP]
    assert {"pose_encoder", "frames", "final_latents", "step0.call0.pred"} <= set(stages)
    results = {stage: compare(stage, ours, gold) for stage in stages}
    for stage, rel in results.items():
        print(f"{stage}: {rel:.2e} (floor {parity_floor.floor(FIXTURE, stage):.1e})")
    failed = {k: v for k, v in results.items() if v > parity_floor.tolerance(FIXTURE, k)}
    assert not failed, f"stages past max(1e-4, 3 x floor): {failed}"


def test_every_step_is_near_the_originals_exact_result(setup, ours):
    """The original's own float32 rounding at each step, measured against its float64 run of the same case
    (float64.safetensors, ``--float64``: modules, pipeline, bank and latents in float64 from the same noise and whisper
    features): ours stays within max(1e-4, 3 x that distance) of the exact result, as half precision is judged
    (docs/parity.md). Prints ours and the original's float32 run against it."""
    gold = setup[1]
    exact = load_file(FIXTURE / "float64.safetensors")
    assert {"final_latents", "step1.guided", "step1.latents"} <= set(exact)
    failed = {}
    for stage in sorted(exact):
        original_rounding = rel_err(gold[stage], exact[stage])[1]
        rel = rel_err(ours[stage], exact[stage])[1]
        allowed = max(parity_floor.BASE, parity_floor.FACTOR * original_rounding)
        print(f"{stage}: ours {rel:.2e}, the original's float32 {original_rounding:.2e} from its float64 run")
        if rel > allowed:
            failed[stage] = (rel, allowed)
    assert not failed, f"stages farther from the original's exact result than its own float32 rounding allows: {failed}"


# each quirk switched off (set to EMO's own behaviour, or to EchoMimic v1's shift): the frames leave the standard
QUIRKS_OFF = {
    "context_shift_per_step": 2,
    "audio_attention_scale": 1.0,
    "initial_noise_clamp": None,
}


@pytest.mark.parametrize("field", sorted(QUIRKS_OFF))
def test_a_quirk_switched_off_fails(setup, field):
    gold = setup[1]
    rel = compare("frames", run_ours(setup, **{field: QUIRKS_OFF[field]}), gold)
    print(f"{field} = {QUIRKS_OFF[field]}: frames {rel:.2e}")
    assert rel > parity_floor.tolerance(FIXTURE, "frames"), f"{field} off: the frames still match ({rel:.2e})"


# ---- bench --against-original echomimic-v2 (our side at the tiny size) -------------------------------------------------


def test_bench_against_the_original_runs_our_side_on_the_harness_files(setup, tmp_path):
    """``emo bench --against-original echomimic-v2``'s own worker (emo_model/app/commands/bench_original.py ``_ours``) on a
    work folder laid out as ``echomimic_v2_original.py --full`` writes it (fixture/checkpoint/*.pth, vae/,
    whisper_tiny_random.pt, stages.safetensors with the pose drawing, meta.json), here with the tiny fixture's files: it
    loads them with our loader, encodes the audio inside the timed run (the original's pipeline call does), reads the
    original's pose images and generates every frame. Speed is not asserted (docs/performance.md has the measured table)."""
    import shutil

    from emo_model.app.commands import bench_original
    from emo_model.families.echomimic_v2 import FAMILY

    meta = setup[0]
    harness = FAMILY.parity
    assert harness is not None and harness.audio_timed and (bench_original.HARNESS / harness.script).is_file()
    assert harness.settings == {"frames": meta["settings"]["frames"], "context": meta["settings"]["context_frames"],
                                "overlap": meta["settings"]["context_overlap"]}  # the harness's defaults
    fixture = tmp_path / "work" / "fixture"
    write_files(FIXTURE, meta, fixture)
    for name in ("vae", "stages.safetensors", "meta.json"):
        (shutil.copytree if name == "vae" else shutil.copy)(FIXTURE / name, fixture / name)
    assert harness.weights_ready(tmp_path / "work")
    spec = {"family": "echomimic-v2", "work": str(tmp_path / "work"), "size": meta["settings"]["size"], "steps": 1,
            "repeats": 1, **harness.settings}
    result = bench_original._ours(spec)
    assert result["family"] == "echomimic-v2" and result["frames"] == meta["settings"]["frames"] and len(result["runs"]) == 1
    assert result["runs"][0]["seconds"] > 0 and result["runs"][0]["peak_rss"] > 0


def test_bench_against_the_original_offers_echomimic_v2_and_runs_its_harness_at_full_size(tmp_path):
    """The command's choices name the family, and the original's side is the parity harness at EchoMimic v2's real
    shapes (--full), timed with --bench."""
    import argparse

    from emo_model.app.commands import bench_original

    assert "echomimic-v2" in bench_original._harnesses()
    args = argparse.Namespace(against_original="echomimic-v2", original_python="/venv/bin/python",
                              original_src="/src/echomimic_v2", size=128, bench_steps=3, work=str(tmp_path))
    cmd = bench_original._harness_command(args, "--bench", "2")
    assert cmd[:4] == ["/venv/bin/python", str(bench_original.HARNESS / "echomimic_v2_original.py"), "--echo-src",
                       "/src/echomimic_v2"]
    assert "--full" in cmd and cmd[cmd.index("--out") + 1] == str(tmp_path.resolve() / "fixture")
    flags = dict(zip(cmd[4:], cmd[5:]))
    assert (flags["--size"], flags["--steps"], flags["--bench"]) == ("128", "3", "2")


# ---- full size (opt-in) ------------------------------------------------------------------------------------------------

FULL_DIR = os.environ.get("EMO_PARITY_ECHOMIMIC_V2_FULL_DIR")


@pytest.mark.skipif(not FULL_DIR, reason="set EMO_PARITY_ECHOMIMIC_V2_FULL_DIR to a full-size fixture (tools/parity/README.md)")
def test_full_size_matches_the_original(tmp_path):
    """Opt-in: ``echomimic_v2_original.py --full`` output made through tools/parity/floor.py (infer.py's shapes: SD1.5
    UNets, ``PoseEncoder(320, 3, (16, 32, 96, 256))``, whisper-tiny; ~10 GB RAM per run), loaded by our loader as the
    ``echomimic-v2`` config: every stage within max(1e-4, 3 x the original's floor there)."""
    folder = Path(FULL_DIR)
    setup = load_setup(folder, tmp_path, config="echomimic-v2")
    meta, gold = setup[0], setup[1]
    assert meta["settings"]["full"], f"{folder} was not made with --full"
    ours = run_ours(setup)
    failures = []
    for stage in [k for k in gold if not k.startswith("input.") and k not in SKIP]:
        rel = compare(stage, ours, gold)
        tol = parity_floor.tolerance(folder, stage)
        print(f"| EchoMimic v2 full | {stage} | {rel:.1e} | {parity_floor.floor(folder, stage):.1e} |")
        if not rel <= tol:
            failures.append(f"{stage}: rel err {rel:.3e} (allowed {tol:.3e})")
    assert not failures, "; ".join(failures)
