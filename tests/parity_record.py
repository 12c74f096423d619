"""Record what our pipeline computes per clip and denoising step, under the names the clip-loop parity
fixtures use (``clip{i}.motion_latents``, ``clip{i}.motion.<slot>``, ``clip{i}.step{s}.pred_uncond`` /
``pred_cond`` / ``guided`` / ``latents``), for the families whose originals run one clip after another."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def recording(model, out: dict[str, torch.Tensor]):
    """Patch ``model`` and the pipeline's schedulers while the block runs; yields ``(put, clip)``:
    ``put(name, tensor)`` stores ``clip{clip['i']}.name`` in ``out`` (set ``clip['i']`` to record more after the run)."""
    clip = {"i": -1, "step": 0}

    def put(name: str, t: torch.Tensor) -> None:
        out[f"clip{clip['i']}.{name}"] = t.detach().float().clone()

    real_encode_motion = model.encode_motion

    def encode_motion(latents, ident=None):  # once per clip, before its first step
        clip["i"] += 1
        clip["step"] = 0
        put("motion_latents", latents[0])
        feats = real_encode_motion(latents, ident)
        for k, v in feats.items():
            out[f"clip{clip['i']}.motion.{k}"] = v.detach().clone()
        return feats

    def forward_hook(module, args, output):  # the guidance batch: first row unconditional, last conditional
        put(f"step{clip['step']}.pred_uncond", output[0])
        put(f"step{clip['step']}.pred_cond", output[-1])

    def on_step(model_output, result):
        put(f"step{clip['step']}.guided", model_output[0])
        put(f"step{clip['step']}.latents", result.prev_sample[0])
        clip["step"] += 1

    handle = model.register_forward_hook(forward_hook)
    model.encode_motion = encode_motion
    try:
        with scheduler_steps(on_step):
            yield put, clip
    finally:
        handle.remove()
        del model.encode_motion


@contextmanager
def scheduler_steps(on_step):
    """While the block runs, ``on_step(model_output, result)`` after every step of the schedulers the pipeline makes."""
    from emo_model.sampling import clip_loop as pipeline_module  # where the clip loop builds its scheduler

    real_make = pipeline_module.make_scheduler

    def make_scheduler(*a, **kw):
        sched = real_make(*a, **kw)
        real_step = sched.step

        def step(model_output, t, sample, **kwargs):
            result = real_step(model_output, t, sample, **kwargs)
            on_step(model_output, result)
            return result

        sched.step = step
        return sched

    pipeline_module.make_scheduler = make_scheduler
    try:
        yield
    finally:
        pipeline_module.make_scheduler = real_make
