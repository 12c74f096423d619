"""Seeds: which random numbers a run draws from its seed, and in what order.

Two layouts (``InferenceQuirks.seed_stream``):

* ``"per_clip"`` (EMO's own): every clip has its own generator seeded from the run's seed and the clip's index
  (:func:`clip_seed`), so a clip's noise does not depend on how many draws came before it (a resumed or
  re-planned run draws the same noise for the same clip).
* ``"single"`` (the originals'): one CPU generator seeded with the seed itself, as ``torch.manual_seed(seed)``
  seeds the scripts' global generator, drawn in the order the original script draws: per clip the motion-frame
  pixel-drop draws (``torch.rand(H, W)``) when the family drops pixels, then the clip's initial noise
  (``randn_tensor([1, C, F, h, w])`` in the run's dtype, drawn on the CPU as diffusers does for a CPU generator);
  for context windows (one latent sequence for the whole video) one draw for every frame at once. With the same
  seed the run starts from the original's very noise.

Noise is drawn in the run's dtype and returned as float32: a half-precision original draws half-precision noise,
which for some sizes differs from float32 noise rounded to half (torch's CPU sampler takes another path).
"""

from __future__ import annotations

import torch

LAYOUTS = ("per_clip", "single")


def clip_seed(seed: int, index: int) -> int:
    """Independent, reproducible seed of clip ``index`` from the run's seed."""
    return (int(seed) * 1_000_003 + index * 7_919) % (2**63 - 1)


class SeedStream:
    """The draws of one run: :meth:`clip` (pixel-drop draws, initial noise) per clip in order, or :meth:`video`
    (the whole latent sequence at once) for context windows."""

    def __init__(self, seed: int, layout: str = "per_clip", dtype: torch.dtype = torch.float32, skip: int = 0) -> None:
        """``skip``: uniform draws (``torch.rand([])``) the single stream takes before anything else, as an original whose
        script draws them from its seeded generator first (InferenceQuirks.seed_draws_per_audio_layer)."""
        if layout not in LAYOUTS:
            raise ValueError(f"unknown seed layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
        self.seed, self.layout = int(seed), layout
        self.dtype = dtype if dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float32
        self._single = torch.Generator("cpu").manual_seed(self.seed) if layout == "single" else None
        for _ in range(skip if self._single is not None else 0):
            torch.rand([], generator=self._single)
        self._clips: dict[int, tuple[torch.Tensor | None, torch.Tensor] | None] = {}

    def _randn(self, shape, generator: torch.Generator) -> torch.Tensor:
        if self.layout == "single":  # the original's dtype: half draws are not always float draws rounded
            return torch.randn(shape, generator=generator, dtype=self.dtype).float()
        return torch.randn(shape, generator=generator, dtype=torch.float32)

    def clip(self, index: int, noise_shape: tuple[int, ...] | None = None, drop_hw: tuple[int, int] | None = None):
        """(pixel-drop draws [H, W] or None, initial noise ``noise_shape`` float32) of clip ``index``; clips are drawn
        in order (a single stream cannot skip ahead), each once: later calls return the same draws."""
        if index not in self._clips:
            if noise_shape is None:
                raise RuntimeError(f"clip {index}'s draws were not made yet")
            if self._single is not None:
                if self._clips and index != max(self._clips) + 1 or not self._clips and index != 0:
                    raise RuntimeError(f"clip {index} drawn out of order from a single seed stream")
                drop = None if drop_hw is None else torch.rand(drop_hw, generator=self._single)
                self._clips[index] = (drop, self._randn(noise_shape, self._single))
            else:
                g = torch.Generator("cpu").manual_seed(clip_seed(self.seed, index))
                noise = self._randn(noise_shape, g)
                drop = None
                if drop_hw is not None:
                    drop = torch.rand(drop_hw, generator=torch.Generator("cpu").manual_seed(clip_seed(self.seed, index) ^ 0xD209))
                self._clips[index] = (drop, noise)
            for done in [i for i in self._clips if i < index]:  # only the current clip's draws are kept: memory does
                self._clips[done] = None  # not grow with the video (a single stream remembers which clips it drew)
        if self._clips[index] is None:
            raise RuntimeError(f"clip {index}'s draws were released: a later clip was already drawn")
        return self._clips[index]

    def video(self, shape: tuple[int, ...], chunk: int) -> torch.Tensor:
        """Initial noise for a whole latent sequence ``shape`` [1, C, F, h, w] (context windows): the single layout
        draws it at once as the original does; the per-clip layout draws ``chunk`` frames per seed (EMO's own)."""
        if self._single is not None:
            return self._randn(shape, self._single)
        frames = shape[2]
        parts = []
        for k, start in enumerate(range(0, frames, chunk)):
            g = torch.Generator("cpu").manual_seed(clip_seed(self.seed, k))
            parts.append(self._randn((*shape[:2], min(chunk, frames - start), *shape[3:]), g))
        return torch.cat(parts, dim=2)

    def step_generator(self, index: int, device) -> torch.Generator:
        """The generator of a stochastic sampler's per-step noise in clip ``index`` (the originals' samplers draw none)."""
        return torch.Generator(device).manual_seed(clip_seed(self.seed, index) ^ 0x5EED)
