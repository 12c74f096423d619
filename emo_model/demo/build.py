"""``python -m emo_model make-demo``: build the CPU demo from nothing, with the real training path.

One command, deterministic from ``--seed`` (given the same torch version and ``--threads``), resumable
(every phase skips what is already in ``--out``, and the training stages resume from their
checkpoints)::

    python -m emo_model make-demo --out runs/demo            # then --install to ship it

1. **videos**: ``--clips`` synthetic talking faces (:mod:`emo_model.demo.synthetic`, seeds
   0 .. clips-1), mp4 with audio, 160x160 at 25 fps.
2. **preprocess**: ``python -m emo_model preprocess`` on them, unchanged: PySceneDetect, the Haar face
   detector on every 2nd frame, a static crop of twice the face box resized to 64x64, the face-region
   mask, log-mel features, flow speed labels, tar shards.
3. **vae**: the demo's tiny ``AutoencoderKL`` trained on the dataset's frames (:mod:`emo_model.demo.vae`).
4. **stage 1, 2, 3**: :class:`emo_model.train.trainer.Trainer` with ``emo_model/demo/configs/demo_stage*.yaml``
   and the demo's EMOConfig (:func:`emo_model.demo.config.demo_config`), each stage initialised from
   the previous one's final weights, the tiny VAE as ``--vae``.
5. **export**: the stage-3 weights in fp16 with the VAE bundled
   (:func:`emo_model.weights.checkpoints.save_native` with ``vae=``), plus the sample portrait and speech clip
   (held-out seed :data:`~emo_model.demo.config.SAMPLE_SEED`), in ``OUT/demo_assets``.
6. **eval**: :mod:`emo_model.demo.metrics` on held-out clips (``OUT/eval.json``; the same table as
   ``python -m emo_model eval-sync``).

``--install`` copies ``OUT/demo_assets/*`` into the package's ``emo_model/demo_assets`` (what
``python -m emo_model generate`` and the Load EMO Model node use). Phase timings go to ``OUT/build.json``.
``--stop-after PHASE`` ends the run once that phase is done: ``--stop-after videos`` gives the synthetic talking
faces alone, the data of docs/training.md's "Train the tiny model from nothing".
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "configs"
PORTRAIT_SIZE = 256
PHASES = ("videos", "preprocess", "vae", "stage1", "stage2", "stage3")
SAMPLE_SECONDS = 4.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="work folder (created; re-running resumes)")
    p.add_argument("--clips", type=int, default=256, help="synthetic training clips [%(default)s]")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each clip [%(default)s]")
    p.add_argument("--seed", type=int, default=0, help="seed of every training run [%(default)s]")
    p.add_argument("--threads", type=int, default=2, help="torch threads [%(default)s]")
    p.add_argument("--workers", type=int, default=1, help="preprocess worker processes [%(default)s]")
    p.add_argument("--vae-steps", type=int, default=2000, help="VAE training steps [%(default)s]")
    p.add_argument("--steps", type=int, nargs=3, metavar=("S1", "S2", "S3"), help="override max_steps of the three stages")
    p.add_argument("--set", action="append", default=[], metavar="STAGE:KEY=VALUE", help="override a stage config entry, e.g. 2:optim.lr=1e-4")
    p.add_argument("--eval-clips", type=int, default=4, help="held-out clips for the lip-sync table (0 = skip eval) [%(default)s]")
    p.add_argument("--install", action="store_true", help="copy the artefacts into emo_model/demo_assets")
    p.add_argument(
        "--stop-after",
        choices=PHASES,
        default=None,
        help="stop once this phase is done, e.g. videos (synthetic talking faces to preprocess and train the tiny config on)",
    )


class Timer:
    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {"phases": {}}

    def run(self, name: str, fn):
        t0 = time.time()
        result = fn()
        spent = time.time() - t0
        self.data["phases"][name] = round(self.data["phases"].get(name, 0.0) + spent, 1)
        self.path.write_text(json.dumps(self.data, indent=2))
        print(f"[make-demo] {name}: {spent:.0f} s", flush=True)
        return result


def preprocess_options(config_json: Path):
    from ..train.preprocess_options import Options

    return Options(
        fps=25.0,
        resolution=64,
        min_seconds=3.0,
        max_seconds=4.0,
        config=str(config_json),
        shard_size=64,
        detector="haar",
        detect_every=2,
        crop_ratio=2.0,
        speed_estimator="flow",
    )


def stage_config(stage: int, config_json: Path, dataset: Path, seed: int, steps: int | None, overrides: list[str]):
    from ..train.trainer import load_train_config

    sets = [f"model={config_json}", f"data.dir={dataset}", f"seed={seed}"]
    sets += [o.split(":", 1)[1] for o in overrides if o.split(":", 1)[0] == str(stage)]
    cfg = load_train_config(CONFIGS / f"demo_stage{stage}.yaml", sets)
    cfg.stage = stage
    if steps:
        cfg.max_steps = steps
        cfg.sample_every = steps
    return cfg


def train_stage(stage: int, out: Path, cfg, vae_dir: Path, init: Path | None) -> Path:
    from ..train.trainer import Trainer

    run = out / f"stage{stage}"
    final = run / f"emo-stage{stage}-final.safetensors"
    if final.is_file():
        print(f"[make-demo] stage {stage}: {final} exists, reusing it")
        return final
    trainer = Trainer(cfg, run, vae=vae_dir, init=init, resume="latest").setup()
    trainer.train()
    return final


def write_samples(folder: Path) -> tuple[Path, Path]:
    """The shipped portrait (a held-out face, neutral, 256 px) and speech clip (a held-out voice)."""
    import cv2

    from .config import SAMPLE_SEED
    from .render import Renderer
    from .synthetic import SAMPLE_RATE, make_clip

    clip = make_clip(SAMPLE_SEED, SAMPLE_SECONDS, render=False)
    portrait = Renderer(clip.look, PORTRAIT_SIZE).frame(mouth=0.0)
    folder.mkdir(parents=True, exist_ok=True)
    png, wav = folder / "portrait.png", folder / "speech.wav"
    cv2.imwrite(str(png), cv2.cvtColor(portrait, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    write_wav(wav, clip.audio, SAMPLE_RATE)
    return png, wav


def write_wav(path: Path, audio, rate: int) -> None:
    """16-bit PCM mono WAV, written with the standard library."""
    import wave

    import numpy as np

    pcm = (np.clip(np.asarray(audio, np.float64), -1, 1) * 32767).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def export(final_stage: Path, vae_dir: Path, folder: Path, metadata: dict) -> Path:
    import torch

    from .. import weights
    from . import model_path

    model = weights.load_emo_model(final_stage, dtype=torch.float32)
    vae = weights.load_vae(vae_dir, dtype=torch.float32)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / model_path().name
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    return weights.save_native(model, path, dtype=torch.float16, vae=vae, metadata=meta)


def check_arguments(args: argparse.Namespace) -> None:
    """Every flag against the shared rules (:mod:`emo_model.validation`) and the --out folder, before any work."""
    from dataclasses import replace

    from .. import validation as v

    v.check_output_folder(args.out, label="--out")
    v.check("clips", args.clips, label="--clips")
    shortest = preprocess_options(Path("unused.json")).min_seconds
    v.check("clip_seconds", args.seconds, label="--seconds", rule=replace(v.RULES["clip_seconds"], lo=shortest),
            hint=f"preprocess keeps segments of {shortest:g} s or more; 4 is the default")
    v.check("seed", args.seed, label="--seed")
    v.check("threads", args.threads, label="--threads")
    v.check("workers", args.workers, label="--workers")
    v.check("train_steps", args.vae_steps, label="--vae-steps", hint="VAE training steps; 2000 is the default")
    for stage, steps in enumerate(args.steps or (), start=1):
        v.check("train_steps", steps, label=f"--steps (stage {stage})")
    for item in args.set:
        stage, sep, rest = item.partition(":")
        if not sep or stage not in ("1", "2", "3") or "=" not in rest:
            raise v.InputError(f"--set needs STAGE:KEY=VALUE with STAGE 1, 2 or 3, e.g. 2:optim.lr=1e-4, got {item!r}")
    if args.stop_after and args.install:
        raise v.InputError(f"--install copies the finished demo, and --stop-after {args.stop_after} ends before it; drop one of them")
    v.check("clips", args.eval_clips, label="--eval-clips", rule=replace(v.RULES["clips"], lo=0), hint="0 skips the lip-sync table")
    import tempfile

    from .config import demo_config

    with tempfile.TemporaryDirectory() as tmp:  # every stage config with its --set values (nothing written to --out yet)
        config_json = Path(tmp) / "emo-tiny-demo.json"
        config_json.write_text(demo_config().to_json())
        for stage in (1, 2, 3):
            steps = args.steps[stage - 1] if args.steps else None
            try:
                stage_config(stage, config_json, Path(tmp) / "dataset", args.seed, steps, args.set).validate()
            except ValueError as e:  # a bad --set value or key: name the option that brought it
                mine = [item for item in args.set if item.partition(":")[0] == str(stage)]
                if not mine:
                    raise
                raise v.InputError(f"--set {' '.join(mine)}: {e}") from e


def run(args: argparse.Namespace) -> int:
    import torch

    from ..train.preprocess import preprocess
    from .config import demo_config
    from .synthetic import write_clips
    from .vae import load_dataset_frames, train_vae

    check_arguments(args)
    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    timer = Timer(out / "build.json")
    timer.data["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("_")}
    t_start = time.time()

    config = demo_config()
    config_json = out / "emo-tiny-demo.json"
    config_json.write_text(config.to_json())
    videos, dataset = out / "videos", out / "dataset"

    timer.run("videos", lambda: write_clips(videos, range(args.clips), seconds=args.seconds))
    if _stop(args, "videos", videos):
        return 0
    opts = preprocess_options(config_json)
    opts.workers = args.workers
    if not (dataset / "index.jsonl").is_file() or len(list(videos.glob("*.mp4"))) != _done_files(dataset):
        timer.run("preprocess", lambda: preprocess(videos, dataset, opts))
    if _stop(args, "preprocess", dataset):
        return 0

    def vae_phase():
        frames, masks = load_dataset_frames(dataset)
        print(f"[make-demo] vae: {len(frames)} frames")
        return train_vae(frames, masks, out / "vae-train", steps=args.vae_steps, seed=args.seed)

    timer.run("vae", vae_phase)
    vae_dir = out / "vae-train" / "vae"
    if _stop(args, "vae", vae_dir):
        return 0

    init = None
    for stage in (1, 2, 3):
        cfg = stage_config(stage, config_json, dataset, args.seed, args.steps[stage - 1] if args.steps else None, args.set)
        init = timer.run(f"stage{stage}", lambda s=stage, c=cfg, i=init: train_stage(s, out, c, vae_dir, i))
        if _stop(args, f"stage{stage}", init):
            return 0

    assets = out / "demo_assets"
    recipe = {
        "emo_demo_recipe": f"python -m emo_model make-demo --clips {args.clips} --seconds {args.seconds} --seed {args.seed}",
        "emo_demo_training_clips": str(args.clips),
        "emo_demo_note": "tiny EMO trained on synthetic talking faces (emo_model/demo/synthetic.py); not a real-face model",
    }
    timer.run("export", lambda: (export(init, vae_dir, assets, recipe), write_samples(assets)))
    timer.data["total_seconds_this_run"] = round(time.time() - t_start, 1)
    timer.path.write_text(json.dumps(timer.data, indent=2))

    if args.eval_clips > 0:
        from ..app.commands.eval_sync import evaluate, print_table

        results = timer.run("eval", lambda: evaluate(assets / "emo-tiny-demo.safetensors", clips=args.eval_clips))
        (out / "eval.json").write_text(json.dumps(results, indent=2))
        print_table(results)

    if args.install:
        from . import ASSETS

        ASSETS.mkdir(parents=True, exist_ok=True)
        for f in sorted(assets.iterdir()):
            shutil.copyfile(f, ASSETS / f.name)
            print(f"installed {ASSETS / f.name} ({f.stat().st_size / 1e6:.2f} MB)")
    sizes = {f.name: f.stat().st_size for f in sorted(assets.iterdir())}
    print(f"[make-demo] done in {time.time() - t_start:.0f} s; artefacts in {assets}: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()))
    return 0


def _stop(args: argparse.Namespace, phase: str, result: Path) -> bool:
    """Whether ``--stop-after`` asks to stop after ``phase`` (then says where its result is)."""
    if args.stop_after != phase:
        return False
    print(f"[make-demo] stopped after {phase} (--stop-after): {result}", flush=True)
    return True


def _done_files(dataset: Path) -> int:
    from ..train.shards import read_journal

    return sum(len(r["files"]) for r in read_journal(dataset)) if dataset.is_dir() else -1


if __name__ == "__main__":  # pragma: no cover
    from ..app.cli import main

    sys.exit(main(["make-demo", *sys.argv[1:]]))
