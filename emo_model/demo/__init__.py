"""The built-in CPU demo: a tiny EMO trained on synthetic talking faces, with a sample portrait and audio.

``python -m emo_model generate`` with no model uses it; so does the "emo-tiny-demo" entry of the
Load EMO Model node. ``python -m emo_model make-demo`` rebuilds it (see ``emo_model/demo/build.py``).
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "demo_assets"


def model_path() -> Path:
    return ASSETS / "emo-tiny-demo.safetensors"


def portrait_path() -> Path:
    return ASSETS / "portrait.png"


def audio_path() -> Path:
    return ASSETS / "speech.wav"
