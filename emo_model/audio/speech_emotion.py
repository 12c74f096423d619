"""Speech emotion per video frame: an emotion2vec encoder, a small classifier, labels per 1 s of audio.

Three pieces, each usable on its own:

* :class:`SpeechEmotionEncoder`: the data2vec-2.0 audio encoder that emotion2vec checkpoints hold, run the way its
  feature extraction runs at inference (no masking, no padding mask): a strided convolution stack on the waveform
  (no bias; LayerNorm over channels per layer, or GroupNorm on the first layer only), LayerNorm + Linear to the
  model width, a stack of grouped convolutions whose output is ADDED to the features (relative positions; an
  even kernel drops its last output step), learned extra tokens put in front, ALiBi biases (symmetric, ``-|i - j|``
  times a per-head slope, times a learned non-negative scale, zero for the extra tokens; heads beyond
  ``alibi_heads`` get none), ``prenet_depth`` blocks, then ``depth`` blocks, the extra tokens removed at the end.
  A block is attention (fused qkv with bias) + an MLP with GELU, either post-norm (``x = n1(x + attn(x));
  x = n2(x + mlp(x))``) or the pre-norm form of its original code, whose MLP branch replaces the residual
  (``x = x + attn(n1(x)); x = 2 * mlp(n2(x))``). Post-norm models normalise the blocks' input once (the prenet's
  norm); pre-norm models normalise the output once (the final norm).
* :class:`EmotionClassifier`: Linear layers with ReLU between them (width -> channels x (layers - 1) -> classes),
  read from a diffusers-style folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, weights as
  ``layers.fc<i>.*``, or ``layers.*`` for one layer; the sizes come from the tensors).
* :func:`segment_windows` / :func:`frame_labels`: one label per second of audio. Second 0 takes the label of the
  first 2 s, second k (k >= 1, starting before the last second) the label of seconds k-1 .. k+2 (3 s), the last
  second (the last 16000 samples) the label of the last 2 s; the per-sample labels are then resampled to the video
  frame count by nearest neighbour (``F.interpolate(mode="nearest")``: frame f reads sample ``floor(f * S / F)``).

The encoder's sizes come from the checkpoint's own ``config.yaml`` (funasr's ``model_conf``, read with
``yaml.safe_load``; the convolution stack spec is parsed, never evaluated) and are checked against the tensors.
Weights are read from local files only, without running pickle code.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 16000


class SpeechEmotionError(ValueError):
    """Missing or unusable speech-emotion files: the message says which file and what to do."""


# ---------------------------------------------------------------------------------------------------
# Encoder configuration


DEFAULT_CONV_STACK = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


@dataclass(frozen=True)
class SpeechEncoderConfig:
    width: int = 768
    depth: int = 8
    prenet_depth: int = 4
    heads: int = 12
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-5
    norm_affine: bool = True
    pre_norm: bool = False  # funasr's layer_norm_first
    conv_stack: tuple[tuple[int, int, int], ...] = DEFAULT_CONV_STACK  # (channels, kernel, stride) per layer
    conv_norm: str = "layer_norm"  # "layer_norm" (every layer) or "group_norm" (first layer only)
    pos_conv_width: int = 95
    pos_conv_depth: int = 5
    pos_conv_groups: int = 16
    pos_pre_norm: bool = False
    extra_tokens: int = 0
    alibi: bool = False
    alibi_heads: int | None = None  # None: every head
    alibi_scale: float = 1.0
    alibi_scale_per_head: bool = False
    alibi_scale_per_layer: bool = False

    @property
    def pos_kernel(self) -> int:
        return max(3, self.pos_conv_width // self.pos_conv_depth)

    @property
    def bias_heads(self) -> int:
        return self.heads if self.alibi_heads is None else self.alibi_heads

    def frames(self, samples: int) -> int:
        """Encoder steps for ``samples`` input samples."""
        n = samples
        for _, k, s in self.conv_stack:
            n = (n - k) // s + 1
        return n

    @classmethod
    def from_model_conf(cls, conf: Mapping) -> SpeechEncoderConfig:
        """From funasr's ``model_conf`` (the ``config.yaml`` next to an emotion2vec checkpoint)."""
        audio = ((conf.get("modalities") or {}).get("audio")) or {}

        def get(mapping, key, default):
            value = mapping.get(key)
            return default if value is None else value

        heads = int(get(conf, "num_heads", 12))
        mode = get(audio, "extractor_mode", "layer_norm")
        if mode not in ("layer_norm", "default"):
            raise SpeechEmotionError(f"config.yaml: extractor_mode {mode!r} is not one of layer_norm, default")
        if get(audio, "learned_alibi", False):
            raise SpeechEmotionError("config.yaml: learned_alibi (a learned bias table) is not supported; only ALiBi slopes with learned scales")
        return cls(
            width=int(get(conf, "embed_dim", 768)),
            depth=int(get(conf, "depth", 8)),
            prenet_depth=int(get(audio, "prenet_depth", 4)),
            heads=heads,
            mlp_ratio=float(get(conf, "mlp_ratio", 4.0)),
            norm_eps=float(get(conf, "norm_eps", 1e-5)),
            norm_affine=bool(get(conf, "norm_affine", True)),
            pre_norm=bool(get(conf, "layer_norm_first", False)),
            conv_stack=parse_conv_stack(str(get(audio, "feature_encoder_spec", ""))) if audio.get("feature_encoder_spec") else DEFAULT_CONV_STACK,
            conv_norm="layer_norm" if mode == "layer_norm" else "group_norm",
            pos_conv_width=int(get(audio, "conv_pos_width", 95)),
            pos_conv_depth=int(get(audio, "conv_pos_depth", 5)),
            pos_conv_groups=int(get(audio, "conv_pos_groups", 16)),
            pos_pre_norm=bool(get(audio, "conv_pos_pre_ln", False)),
            extra_tokens=int(get(audio, "num_extra_tokens", 0)),
            alibi=bool(get(audio, "use_alibi_encoder", False)),
            alibi_heads=int(get(audio, "num_alibi_heads", heads)),
            alibi_scale=float(get(audio, "alibi_scale", 1.0)),
            alibi_scale_per_head=bool(get(audio, "learned_alibi_scale_per_head", False)),
            alibi_scale_per_layer=bool(get(audio, "learned_alibi_scale_per_layer", False)),
        )


def parse_conv_stack(spec: str) -> tuple[tuple[int, int, int], ...]:
    """``"[(512, 10, 5)] + [(512, 3, 2)] * 4"`` -> the layers, without evaluating the text: only lists of
    (channels, kernel, stride) integer triples joined by ``+`` and repeated by ``* n`` are accepted."""

    def walk(node) -> list:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return walk(node.left) + walk(node.right)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            items, count = (node.left, node.right) if isinstance(node.left, ast.List) else (node.right, node.left)
            if not (isinstance(count, ast.Constant) and type(count.value) is int and count.value >= 0):
                raise ValueError("a repeat count must be a non-negative integer")
            return walk(items) * count.value
        if isinstance(node, ast.List):
            out = []
            for elt in node.elts:
                if not (isinstance(elt, ast.Tuple) and len(elt.elts) == 3
                        and all(isinstance(v, ast.Constant) and type(v.value) is int and v.value > 0 for v in elt.elts)):
                    raise ValueError("each layer must be a (channels, kernel, stride) triple of positive integers")
                out.append(tuple(v.value for v in elt.elts))
            return out
        raise ValueError(f"unexpected {type(node).__name__}")

    try:
        layers = walk(ast.parse(spec.strip(), mode="eval").body)
    except (SyntaxError, ValueError) as exc:
        raise SpeechEmotionError(f"config.yaml: feature_encoder_spec {spec!r} is not a list of (channels, kernel, stride) layers ({exc})") from None
    if not layers:
        raise SpeechEmotionError(f"config.yaml: feature_encoder_spec {spec!r} has no layers")
    return tuple(layers)


# ---------------------------------------------------------------------------------------------------
# Encoder


def alibi_slopes(heads: int) -> list[float]:
    """ALiBi's per-head slopes: for 2^n heads ``r, r^2, ..., r^(2^n)`` with ``r = 2^(-8 / 2^n)``; otherwise the
    slopes of the largest power of two below, then every other slope of the next power of two."""
    if math.log2(heads).is_integer():
        r = 2.0 ** (-(2.0 ** -(math.log2(heads) - 3)))
        return [r * r**i for i in range(heads)]
    p = 2 ** math.floor(math.log2(heads))
    return alibi_slopes(p) + alibi_slopes(2 * p)[0::2][: heads - p]


def alibi_bias(steps: int, heads: int) -> torch.Tensor:
    """``[heads, steps, steps]``: ``-slope_h * |i - j|``."""
    pos = torch.arange(steps)
    distance = -(pos[None, :] - pos[:, None]).abs()
    return torch.tensor(alibi_slopes(heads), dtype=torch.float32)[:, None, None] * distance[None].float()


class _ConvLayer(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, norm: str | None):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, bias=False)
        self.norm_kind = norm
        if norm == "layer_norm":
            self.norm = nn.LayerNorm(c_out)
        elif norm == "group_norm":
            self.norm = nn.GroupNorm(c_out, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T]
        x = self.conv(x)
        if self.norm_kind == "layer_norm":
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        elif self.norm_kind == "group_norm":
            x = self.norm(x)
        return F.gelu(x)


class _PositionConv(nn.Module):
    def __init__(self, width: int, kernel: int, groups: int):
        super().__init__()
        self.conv = nn.Conv1d(width, width, kernel, padding=kernel // 2, groups=groups)
        self.trim = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T]
        x = self.conv(x)
        if self.trim:
            x = x[:, :, : -self.trim]
        x = F.layer_norm(x.transpose(1, 2), (x.shape[1],)).transpose(1, 2)
        return F.gelu(x)


class _Block(nn.Module):
    def __init__(self, cfg: SpeechEncoderConfig):
        super().__init__()
        w = cfg.width
        self.heads, self.pre_norm = cfg.heads, cfg.pre_norm
        self.norm1 = nn.LayerNorm(w, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.qkv = nn.Linear(w, 3 * w)
        self.out = nn.Linear(w, w)
        self.norm2 = nn.LayerNorm(w, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        hidden = int(w * cfg.mlp_ratio)
        self.fc1 = nn.Linear(w, hidden)
        self.fc2 = nn.Linear(hidden, w)

    def attention(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if bias is not None and bias.shape[1] < self.heads:  # heads beyond the biased ones get none
            bias = F.pad(bias, (0, 0, 0, 0, 0, self.heads - bias.shape[1]))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(q.dtype))
        return self.out(y.transpose(1, 2).reshape(b, n, c))

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attention(self.norm1(x), bias)
            return 2 * self.fc2(F.gelu(self.fc1(self.norm2(x))))  # the MLP branch replaces the residual
        x = self.norm1(x + self.attention(x, bias))
        return self.norm2(x + self.fc2(F.gelu(self.fc1(x))))


class SpeechEmotionEncoder(nn.Module):
    """emotion2vec's audio encoder: ``[B, samples]`` (each row normalised by the caller) -> ``[B, steps, width]``."""

    def __init__(self, cfg: SpeechEncoderConfig):
        super().__init__()
        self.cfg = cfg
        layers, c_in = [], 1
        for i, (c, k, s) in enumerate(cfg.conv_stack):
            norm = "layer_norm" if cfg.conv_norm == "layer_norm" else ("group_norm" if i == 0 else None)
            layers.append(_ConvLayer(c_in, c, k, s, norm))
            c_in = c
        self.conv_stack = nn.ModuleList(layers)
        self.feature_norm = nn.LayerNorm(c_in)
        self.feature_proj = nn.Linear(c_in, cfg.width)
        self.pos_norm = nn.LayerNorm(cfg.width) if cfg.pos_pre_norm else None
        self.pos_convs = nn.ModuleList(_PositionConv(cfg.width, cfg.pos_kernel, cfg.pos_conv_groups) for _ in range(cfg.pos_conv_depth))
        self.extra_tokens = nn.Parameter(torch.zeros(1, cfg.extra_tokens, cfg.width)) if cfg.extra_tokens else None
        if cfg.alibi:
            rows = cfg.prenet_depth + cfg.depth if cfg.alibi_scale_per_layer else 1
            heads = cfg.bias_heads if cfg.alibi_scale_per_head else 1
            self.alibi_scale = nn.Parameter(torch.full((rows, 1, heads, 1, 1), cfg.alibi_scale))
        else:
            self.alibi_scale = None
        self.prenet_norm = None if cfg.pre_norm else nn.LayerNorm(cfg.width, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.prenet = nn.ModuleList(_Block(cfg) for _ in range(cfg.prenet_depth))
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine) if cfg.pre_norm else None

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        x = waveform[:, None]
        for layer in self.conv_stack:
            x = layer(x)
        x = self.feature_proj(self.feature_norm(x.transpose(1, 2)))  # [B, T, width]
        b, steps, _ = x.shape
        pos = x if self.pos_norm is None else self.pos_norm(x)
        pos = pos.transpose(1, 2)
        for conv in self.pos_convs:
            pos = conv(pos)
        x = x + pos.transpose(1, 2)
        biases = [None] * (cfg.prenet_depth + cfg.depth)
        if self.alibi_scale is not None:
            base = alibi_bias(steps, cfg.bias_heads).to(x.device)[None]  # [1, H, T, T]
            scale = self.alibi_scale.clamp_min(0).to(base.dtype)
            biases = [base * scale[i if scale.shape[0] > 1 else 0] for i in range(len(biases))]
            if cfg.extra_tokens:  # the extra tokens attend and are attended to without a bias
                n = cfg.extra_tokens
                biases = [F.pad(bi, (n, 0, n, 0)) for bi in biases]
        if self.extra_tokens is not None:
            x = torch.cat([self.extra_tokens.expand(b, -1, -1).to(x.dtype), x], dim=1)
        if self.prenet_norm is not None:
            x = self.prenet_norm(x)
        for block, bias in zip([*self.prenet, *self.blocks], biases):
            x = block(x, bias)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x[:, cfg.extra_tokens :]


def encoder_state_from_checkpoint(tensors: Mapping[str, torch.Tensor], cfg: SpeechEncoderConfig) -> dict[str, torch.Tensor]:
    """An emotion2vec (funasr) state dict -> :class:`SpeechEmotionEncoder` names. Tensors the encoder does not use at
    inference (the utterance head ``proj``, a pre-training decoder) are left out."""
    src = "modality_encoders.AUDIO."
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        key = key.removeprefix("module.")
        new = None
        if key.startswith(src):
            rest = key[len(src):]
            parts = rest.split(".")
            if rest in ("extra_tokens", "alibi_scale"):
                new = rest
                if rest == "alibi_scale" and value.dim() == 4:  # older files store it without the layer axis
                    value = value[None]
            elif rest.startswith("local_encoder.conv_layers."):
                i, tail = parts[2], ".".join(parts[3:])
                new = {"0.weight": f"conv_stack.{i}.conv.weight", "2.1.weight": f"conv_stack.{i}.norm.weight",
                       "2.1.bias": f"conv_stack.{i}.norm.bias", "2.weight": f"conv_stack.{i}.norm.weight",
                       "2.bias": f"conv_stack.{i}.norm.bias"}.get(tail)
            elif rest.startswith("project_features."):
                new = {"1": "feature_norm", "2": "feature_proj"}.get(parts[1])
                new = new and f"{new}.{parts[2]}"
            elif rest.startswith("relative_positional_encoder."):
                if cfg.pos_pre_norm:  # Sequential(LayerNorm, Sequential(transpose, conv blocks..., transpose))
                    if parts[1] == "0":
                        new = f"pos_norm.{parts[2]}"
                    elif parts[1] == "1" and parts[3] == "0":
                        new = f"pos_convs.{int(parts[2]) - 1}.conv.{parts[4]}"
                elif parts[2] == "0":  # Sequential(transpose, conv blocks..., transpose)
                    new = f"pos_convs.{int(parts[1]) - 1}.conv.{parts[3]}"
            elif rest.startswith("context_encoder.blocks."):
                new = "prenet." + _block_key(parts[2:])
            elif rest.startswith("context_encoder.norm."):
                new = f"prenet_norm.{parts[2]}"
        elif key.startswith("blocks."):
            new = "blocks." + _block_key(key.split(".")[1:])
        elif key.startswith("norm."):
            new = "final_norm." + key.split(".", 1)[1]
        if new:
            out[new] = value
    return out


def _block_key(parts: list[str]) -> str:
    index, rest = parts[0], ".".join(parts[1:])
    names = {"attn.qkv": "qkv", "attn.proj": "out", "mlp.fc1": "fc1", "mlp.fc2": "fc2", "norm1": "norm1", "norm2": "norm2"}
    stem, _, leaf = rest.rpartition(".")
    return f"{index}.{names.get(stem, stem)}.{leaf}"


# ---------------------------------------------------------------------------------------------------
# Classifier


class EmotionClassifier(nn.Module):
    """Linear layers with ReLU between them: ``[B, width] -> [B, classes]`` logits."""

    def __init__(self, width: int, classes: int, layers: int = 5, channels: int = 2048):
        super().__init__()
        dims = [width] + [channels] * (layers - 1) + [classes]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    @property
    def classes(self) -> int:
        return self.linears[-1].out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, linear in enumerate(self.linears):
            x = linear(x) if i == 0 else linear(F.relu(x))
        return x

    @staticmethod
    def state_from_checkpoint(tensors: Mapping[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in tensors.items():
            parts = key.split(".")
            if layers == 1 and parts[0] == "layers" and len(parts) == 2:
                out[f"linears.0.{parts[1]}"] = value
            elif parts[0] == "layers" and len(parts) == 3 and parts[1].startswith("fc"):
                out[f"linears.{int(parts[1][2:]) - 1}.{parts[2]}"] = value
        return out


# ---------------------------------------------------------------------------------------------------
# Labels per second -> per frame


def segment_windows(samples: int, rate: int = SAMPLE_RATE) -> list[tuple[int, int, int, int]]:
    """``(label_start, label_end, window_start, window_end)`` sample ranges, in the order they are written (a later
    one overwrites an earlier one where they overlap): the first second <- the first 2 s; each second starting at
    ``k * rate`` (k >= 1, starting before ``samples - rate``) <- the 3 s from one second before it; the last
    ``rate`` samples <- the last ``2 * rate`` samples. Ranges are clipped to the audio."""

    def clip(a: int, b: int) -> tuple[int, int]:
        return max(0, min(a, samples)), max(0, min(b, samples))

    out = [(*clip(0, rate), *clip(0, 2 * rate))]
    for i in range(rate, samples - rate, rate):
        out.append((*clip(i, i + rate), *clip(i - rate, i + 2 * rate)))
    out.append((*clip(samples - rate, samples), *clip(samples - 2 * rate, samples)))
    return out


def frame_labels(window_labels: Sequence[int], samples: int, num_frames: int, rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Per-window labels (in :func:`segment_windows` order) -> ``[num_frames]`` long labels."""
    per_sample = torch.full((samples,), -1, dtype=torch.float32)
    for (a, b, _, _), label in zip(segment_windows(samples, rate), window_labels):
        per_sample[a:b] = float(label)
    return F.interpolate(per_sample[None, None], size=num_frames, mode="nearest")[0, 0].long()


# ---------------------------------------------------------------------------------------------------
# Encoder + classifier, loaded from local folders


@dataclass
class SpeechEmotionResult:
    labels: torch.Tensor  # long [num_frames]
    window_labels: list[int]
    window_probs: torch.Tensor = field(repr=False)  # [windows, classes]


class SpeechEmotionClassifier(nn.Module):
    def __init__(self, encoder: SpeechEmotionEncoder, classifier: EmotionClassifier):
        super().__init__()
        self.encoder, self.classifier = encoder, classifier

    @torch.no_grad()
    def utterance_features(self, segment: torch.Tensor) -> torch.Tensor:
        """One mono 16 kHz segment -> its mean encoder feature ``[width]`` (the segment is normalised to zero mean
        and unit variance over all its samples first)."""
        x = F.layer_norm(segment.float(), segment.shape)[None]
        p = next(self.parameters())
        return self.encoder(x.to(p.device, p.dtype)).float().mean(dim=1)[0]

    @torch.no_grad()
    def window_features(
        self, wave: torch.Tensor, spans: Sequence[tuple[int, int]], batch: int = 8, on_progress: Callable[[int, int], None] | None = None
    ) -> torch.Tensor:
        """:meth:`utterance_features` of ``wave[a:b]`` for each span, windows of equal length run ``batch`` at a time.
        ``on_progress(done, total)`` after each batch (windows encoded so far; it may raise to stop)."""
        out: list[torch.Tensor | None] = [None] * len(spans)
        by_length: dict[int, list[int]] = {}
        for i, (a, b) in enumerate(spans):
            by_length.setdefault(b - a, []).append(i)
        p = next(self.parameters())
        for length, idx in by_length.items():
            for k in range(0, len(idx), batch):
                part = idx[k : k + batch]
                x = torch.stack([F.layer_norm(wave[spans[i][0] : spans[i][1]], (length,)) for i in part])
                feats = self.encoder(x.to(p.device, p.dtype)).float().mean(dim=1).cpu()
                for i, f in zip(part, feats):
                    out[i] = f
                if on_progress is not None:
                    on_progress(sum(f is not None for f in out), len(spans))
        return torch.stack(out)

    @torch.no_grad()
    def window_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """``[W, width]`` -> ``[W, classes]``: the softmax of the classifier's logits taken twice, as the original
        applies it once in the classifier and once after (the argmax is the logits' one except on exact ties)."""
        p = next(self.classifier.parameters())
        logits = self.classifier(features.to(p.device, p.dtype)).float()
        return torch.softmax(torch.softmax(logits, dim=-1), dim=-1)

    @torch.no_grad()
    def classify(
        self, waveform: torch.Tensor, num_frames: int, rate: int = SAMPLE_RATE, on_progress: Callable[[int, int], None] | None = None
    ) -> SpeechEmotionResult:
        """Mono 16 kHz ``waveform`` -> one emotion class per video frame (``num_frames`` frames spread over it);
        ``on_progress(windows done, windows)`` as the windows are encoded (it may raise to stop)."""
        wave = waveform.reshape(-1).float().cpu()
        windows = segment_windows(wave.shape[0], rate)
        feats = self.window_features(wave, [(a, b) for _, _, a, b in windows], on_progress=on_progress)
        probs = self.window_probabilities(feats).cpu()
        labels = [int(i) for i in probs.argmax(dim=-1)]
        return SpeechEmotionResult(frame_labels(labels, wave.shape[0], num_frames, rate), labels, probs)

    # ---- files ----------------------------------------------------------------------------------------
    @classmethod
    def from_folders(cls, encoder_dir: str | Path, classifier_dir: str | Path, device="cpu") -> SpeechEmotionClassifier:
        encoder = load_encoder(encoder_dir)
        classifier = load_classifier(classifier_dir)
        if classifier.linears[0].in_features != encoder.cfg.width:
            raise SpeechEmotionError(
                f"{classifier_dir} reads {classifier.linears[0].in_features}-wide features but {encoder_dir} makes "
                f"{encoder.cfg.width}-wide ones; use the encoder the classifier was trained on"
            )
        return cls(encoder, classifier).to(device).eval()


ENCODER_WEIGHTS = ("model.safetensors", "model.pt")
CLASSIFIER_WEIGHTS = ("diffusion_pytorch_model.safetensors", "model.safetensors")


def _read(path: Path) -> dict[str, torch.Tensor]:
    from ..weights.files import WeightsError, read_state_dict

    try:
        return read_state_dict(path)
    except WeightsError as exc:
        raise SpeechEmotionError(str(exc)) from None


def load_encoder(folder: str | Path) -> SpeechEmotionEncoder:
    """An emotion2vec folder: ``config.yaml`` (funasr's) + ``model.pt`` (or ``model.safetensors``)."""
    import yaml

    folder = Path(folder)
    conf_path = folder / "config.yaml"
    weights = next((folder / n for n in ENCODER_WEIGHTS if (folder / n).is_file()), None)
    if not conf_path.is_file() or weights is None:
        missing = "config.yaml" if not conf_path.is_file() else " or ".join(ENCODER_WEIGHTS)
        raise SpeechEmotionError(f"{folder}: {missing} missing; the emotion2vec folder holds config.yaml and model.pt as downloaded")
    try:
        conf = yaml.safe_load(conf_path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpeechEmotionError(f"{conf_path}: not a readable YAML file ({str(exc).splitlines()[0]}); download it again") from None
    model_conf = conf.get("model_conf") if isinstance(conf, dict) else None
    if not isinstance(model_conf, dict):
        raise SpeechEmotionError(f"{conf_path}: no model_conf section; this is not an emotion2vec config.yaml")
    cfg = SpeechEncoderConfig.from_model_conf(model_conf)
    encoder = SpeechEmotionEncoder(cfg)
    state = encoder_state_from_checkpoint(_read(weights), cfg)
    _load_strict(encoder, state, weights, "config.yaml")
    return encoder.eval()


def load_classifier(folder: str | Path) -> EmotionClassifier:
    """A diffusers-style folder: ``config.json`` + ``diffusion_pytorch_model.safetensors``."""
    folder = Path(folder)
    weights = next((folder / n for n in CLASSIFIER_WEIGHTS if (folder / n).is_file()), None)
    if weights is None or not (folder / "config.json").is_file():
        missing = "config.json" if weights is not None else CLASSIFIER_WEIGHTS[0]
        raise SpeechEmotionError(f"{folder}: {missing} missing; the classifier folder holds config.json and {CLASSIFIER_WEIGHTS[0]}")
    try:
        json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpeechEmotionError(f"{folder / 'config.json'}: not valid JSON ({exc}); download it again") from None
    # The published config.json names only the class (its constructor arguments are not recorded): the layer count
    # and width come from the tensors.
    tensors = _read(weights)
    fc = sorted(int(k.split(".")[1][2:]) for k in tensors
                if k.startswith("layers.fc") and k.endswith(".weight") and k.split(".")[1][2:].isdigit())
    layers = len(fc) if fc else (1 if "layers.weight" in tensors else 0)
    if not layers or (fc and fc != list(range(1, layers + 1))):
        raise SpeechEmotionError(f"{weights}: not an audio-emotion classifier (no layers.fc1..fcN / layers.* tensors)")
    state = EmotionClassifier.state_from_checkpoint(tensors, layers)
    first, last = state["linears.0.weight"], state[f"linears.{layers - 1}.weight"]
    classifier = EmotionClassifier(first.shape[1], last.shape[0], layers, first.shape[0])
    _load_strict(classifier, state, weights, "config.json")
    return classifier.eval()


def _load_strict(module: nn.Module, state: dict, path: Path, config: str) -> None:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))  # e.g. a LayerNorm the config says is not there
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if missing or wrong or extra:
        what = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra else
                f"{wrong[0]} is {got[wrong[0]]}, expected {expected[wrong[0]]}")
        raise SpeechEmotionError(
            f"{path}: does not match its {config} ({what}; {len(missing)} missing, {len(extra)} unexpected, "
            f"{len(wrong)} of another shape); "
            f"keep the weights and the {config} they were published with together"
        )
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


def find_folder(model_path: str | Path, candidates: Sequence[str], required: Sequence[str]) -> Path | None:
    """The first of ``candidates`` (sub-folders of the model folder; of a model file's folder) that holds a file of
    each group in ``required`` (a group is names separated by ``|``), or None."""
    base = Path(model_path)
    base = base if base.is_dir() else base.parent
    for rel in candidates:
        folder = base / rel
        if folder.is_dir() and all(any((folder / n).is_file() for n in group.split("|")) for group in required):
            return folder
    return None


ENCODER_FILES = ("config.yaml", "|".join(ENCODER_WEIGHTS))
CLASSIFIER_FILES = ("config.json", "|".join(CLASSIFIER_WEIGHTS))
