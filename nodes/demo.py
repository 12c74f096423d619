"""EMO Demo Sample: the portrait and speech clip shipped with the pack, so the demo workflow runs as is."""

from __future__ import annotations

import numpy as np
import torch

from ..emo_model import demo


class EMODemoSample:
    DESCRIPTION = (
        "Loads the sample portrait and speech clip that ship with ComfyUI-EMO (made for the built-in CPU demo model), "
        "so the demo workflow runs without copying files into ComfyUI/input. Use Load Image / Load Audio for your own."
    )
    CATEGORY = "EMO"
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "AUDIO")
    RETURN_NAMES = ("portrait", "audio")
    OUTPUT_TOOLTIPS = ("The sample portrait.", "The sample speech clip.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        import cv2

        from ..emo_model.audio.signal import load_audio

        bgr = cv2.imread(str(demo.portrait_path()), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"the demo portrait is missing: {demo.portrait_path()} (reinstall the pack)")
        image = torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0)[None]
        waveform, rate = load_audio(str(demo.audio_path()))
        return (image, {"waveform": waveform[None], "sample_rate": rate})
