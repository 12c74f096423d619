"""``python -m emo_model train``: the command line of the trainer (its arguments, and one clear line for a user's mistake)."""

from __future__ import annotations

import argparse

from .train_config import TrainError, _message, load_train_config
from .trainer import Trainer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stage", type=lambda s: int(s) if s.isdigit() else s, choices=(1, 2, 3, "distill"), required=True,
        help="1 image, 2 video + audio, 3 speed layers, distill: a few-step student of the --init teacher (docs/training.md)",
    )
    parser.add_argument(
        "--config", required=True, help="training config (JSON or YAML), e.g. emo_model/train/configs/emo_stage1.yaml"
    )
    parser.add_argument("--data", default=None, help="dataset folder from `preprocess` (overrides data.dir)")
    parser.add_argument("--output", default=None, help="run folder (default: runs/stageN)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        help="resume: 'latest' (default when given alone) or a checkpoint folder",
    )
    parser.add_argument(
        "--init", default=None, help="start from a checkpoint (native .safetensors of the previous stage, a family's whole-model file, ...)"
    )
    parser.add_argument(
        "--sd15", default=None, help="SD1.5 UNet (diffusers folder or single file) to initialise both UNets (stage 1)"
    )
    parser.add_argument(
        "--animatediff", default=None, help="AnimateDiff v2 motion module (mm_sd_v15_v2.ckpt) for the temporal modules (stage 2)"
    )
    parser.add_argument("--vae", default=None, help="SD VAE (diffusers folder or single file), e.g. sd-vae-ft-mse")
    parser.add_argument("--max-steps", type=int, default=None, help="override max_steps")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config entry, e.g. optim.lr=1e-4 (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    """Every flag and config value is checked (one line naming it; ``--debug`` for the traceback) before model work."""
    from .. import validation

    if args.stage == "distill":
        from .distill import run as run_distill

        return run_distill(args)
    if args.max_steps is not None:
        validation.check("train_steps", args.max_steps, label="--max-steps")
    validation.check_input_path(args.config, label="--config", kind="file")
    cfg = load_train_config(args.config, args.set)
    cfg.stage = args.stage
    if args.data:
        cfg.data.dir = args.data
    if args.max_steps is not None:
        cfg.max_steps = args.max_steps
    output = args.output or f"runs/stage{args.stage}"
    trainer = Trainer(cfg, output, vae=args.vae, init=args.init, sd15=args.sd15, animatediff=args.animatediff, resume=args.resume)
    trainer.check_inputs()  # setup() checks again; here it runs before accelerate starts
    try:
        trainer.setup()
    except KeyError as exc:  # an unknown name in the config (scheduler, config name)
        raise TrainError(_message(exc)) from exc
    summary = trainer.train()
    if trainer.accelerator.is_main_process:
        print(f"done: {summary['steps']} steps, weights in {summary['final']}")
    return 0
