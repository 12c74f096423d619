"""``python -m emo_model <command>``: the command line of the package.

Each command lives next to the code it drives and exposes ``add_arguments(parser)`` and
``run(args) -> int``; this file only lists them, so ``--help`` stays cheap and one command's
missing optional dependency never breaks another.
"""

from __future__ import annotations

import argparse
import importlib
import sys

DEBUG_FLAG = "--debug"

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": (".commands.generate", "portrait + audio -> mp4 (no arguments: the built-in CPU demo)"),
    "bench": (".commands.bench", "seconds per frame and peak memory: default recipe vs fast mode, or vs an original"),
    "inspect": (".commands.weights", "family, tensors, dtype and size of checkpoint files"),
    "convert": (".commands.weights", "any supported checkpoint -> one native .safetensors"),
    "download": (".commands.download", "fetch the published files a family needs into ComfyUI's model folders (Hugging Face)"),
    "preprocess": ("..train.preprocess", "a folder of talking/singing videos -> a training dataset"),
    "train": ("..train.command", "EMO's three-stage training (single GPU or accelerate launch)"),
    "eval-sync": (".commands.eval_sync", "lip-sync and speed-control measures of the demo model"),
    "eval-fast": (".commands.eval_fast", "the fast mode's work savers: denoiser work vs lip sync and fidelity, on the demo"),
    "make-demo": ("..demo.build", "train the tiny CPU demo model from synthetic talking faces"),
}


def prog_name() -> str:
    """How the user called us: the installed ``emo`` command, or ``python -m emo_model``."""
    from pathlib import Path

    return "emo" if Path(sys.argv[0]).stem == "emo" else "python -m emo_model"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog_name(),
        description="EMO (Emote Portrait Alive): portrait + audio -> talking video. Run a command with --help for its options.",
        epilog=f"A mistake in the input ends with one 'error: ...' line; add {DEBUG_FLAG} to any command to see the traceback.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module, _name=name)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that report a problem with the user's input (shown as one line, no traceback)."""
    from ..audio.signal import AudioError
    from ..face import FaceError
    from ..validation import GenerationError, InputError
    from ..video_io import VideoError
    from ..weights.files import WeightsError

    return (InputError, GenerationError, WeightsError, AudioError, FaceError, VideoError, FileNotFoundError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    from .host_memory import tune

    tune()  # before any command imports torch: faster CPU allocation for our own process (host_memory.py)
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        return _main(argv)
    except SystemExit as exc:  # a command's own "error: ..." line; argparse's usage errors keep their status
        if isinstance(exc.code, str) and not debug:
            print(exc.code, file=sys.stderr)
            return 1
        raise
    except Exception as exc:
        if debug or not isinstance(exc, user_errors()):
            raise
        from ..validation import first_line

        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 1


def _main(argv: list[str]) -> int:
    if not argv:
        argv = ["generate"]  # the README's main command: the demo
    parser = build_parser()
    # parse the command name first, then let its module add its own arguments
    known, _ = parser.parse_known_args(argv[:1] if argv[0] in COMMANDS else argv)
    if known.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(known._module, __package__)
    sub = argparse.ArgumentParser(prog=f"{prog_name()} {known.command}", description=COMMANDS[known.command][1])
    adder = getattr(module, f"add_{known.command.replace('-', '_')}_arguments", None) or module.add_arguments
    adder(sub)
    args = sub.parse_args(argv[1:])
    runner = getattr(module, f"run_{known.command.replace('-', '_')}", None) or module.run
    return int(runner(args) or 0)
