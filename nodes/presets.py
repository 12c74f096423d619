"""Preset-backed widgets: which widget value means "the model's preset", and what it resolves to.

A widget of EMO Sampler / Audio Encode / Reference Encode left at its sentinel (0, or -1 for
motion_frames) takes the loaded model's preset; workflows saved with 0 keep meaning exactly that. So
that an artist never sees a bare 0 meaning something else, the web extension (``web/js/emo.js``, which
holds a copy of :data:`PRESET_WIDGETS`; a test keeps them equal) labels such a widget "steps (preset)",
and, once Load EMO Model has run, "steps (preset: 20)" with the loaded model's values; Load EMO Model
shows the whole preset on the node and the sampler's summary states the values it used.
"""

from __future__ import annotations

from typing import Any

# node id -> widget -> [sentinel value, what the sentinel means (shown in the widget's label)]
PRESET_WIDGETS: dict[str, dict[str, list[Any]]] = {
    "EMOSampler": {
        "steps": [0, "preset"],
        "cfg": [0.0, "preset"],
        "audio_cfg": [0.0, "same as cfg"],
        "frames_per_clip": [0, "preset"],
        "motion_frames": [-1, "preset"],
    },
    "EMOAudioEncode": {"fps": [0.0, "preset"]},
    "EMOReferenceEncode": {"size": [0, "preset"]},
}


def resolved_preset(session) -> dict[str, Any]:
    """What every preset-backed widget means for this model when left at its sentinel."""
    p = session.config.preset
    return {
        "steps": int(p.steps),
        "cfg": float(p.cfg),
        "audio_cfg": float(p.audio_cfg),
        "frames_per_clip": int(p.frames_per_clip),
        "motion_frames": int(p.motion_frames) if p.strategy == "motion_frames" else None,  # None: not used
        "fps": float(p.fps),
        "size": int(p.resolution),
        "sampler": p.sampler,
    }


def preset_summary(session) -> str:
    """One line for Load EMO Model: the model and its preset, in the widgets' words."""
    r = resolved_preset(session)
    clip = f"{r['frames_per_clip']} frames per clip" + (
        f" + {r['motion_frames']} motion frames" if r["motion_frames"] is not None else f" (context windows, overlap {session.config.preset.context_overlap})"
    )
    return (
        f"{session.name} · preset (used where a widget says 'preset'): {r['steps']} {r['sampler']} steps · cfg {r['cfg']:g} · "
        f"audio_cfg {r['audio_cfg']:g} · {clip} · {r['fps']:g} fps · {r['size']}x{r['size']} px"
        + (f" · a distilled student of {teacher} (its guidance folded in)" if (teacher := session.info.get("distilled_from")) else "")
    )
