"""Which context tokens the UNet reads: cross-attention weight per token, block and step.

Every attention module of the UNet that reads the context (``SimpleCrossAttn`` blocks of
the ContextMRI layout, keys = [context tokens; image tokens]; ``Transformer2D``
cross-attention, keys = context tokens) is watched by :class:`AttentionRecorder`: a forward
pre-hook recomputes the module's attention probabilities from its own projections (the
module's output is untouched) and keeps, per sample, the **share of attention** each key
receives, averaged over heads and query pixels:

    share_j = mean_{heads h, queries q} softmax_j(q_h . k_hj / sqrt(d))

so the context tokens' shares plus the image tokens' share sum to 1 in a ``SimpleCrossAttn``
block (and the context shares alone to 1 in plain cross-attention). The gated
concatenation (:mod:`metamri.encoders.gated_attention`) is read with its gate: the appended
tokens' unnormalised weights are multiplied by g, as the model computes them.

Tokens are named by :func:`token_labels`: text tokens by the metadata field whose words they
spell in the prompt (``text:contrast``, ``text:te`` ...; ``text:start`` the begin token,
``text:punctuation`` the ", " between parts, ``text:end`` the end and padding tokens), the
concatenated fusion's appended tokens ``sep`` and ``field:<name>``. With the additive fusion
every text token carries the sum of the field embeddings as well, so its attention is to
"the words of that field plus every field"; only the concatenated fusion gives each field
a token of its own.

:func:`attention_table` groups a recording into one row per (block, call, group), where a
call is one UNet evaluation (one sampler step at guidance scale 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from metamri.metadata import Metadata

#: Group of the image tokens (the keys of a SimpleCrossAttn block after the context).
IMAGE_GROUP = "image"


@dataclass
class AttentionRecorder:
    """Context manager recording each context-reading attention module's token shares.

    Args:
        unet: A diffusers ``UNet2DConditionModel``.

    Attributes:
        blocks: The watched modules' names (``down_blocks.1.attentions.0`` ...), in model order.
        shares: One entry per (call, module): ``(call, block, float64 (B, L) context shares,
            float64 (B,) image share)``; the image share is 0 in plain cross-attention.
        timesteps: The timestep of each UNet call (its first element when batched).
        image_tokens: block -> the image tokens among its keys (H x W of the block; 0 in
            plain cross-attention).
    """

    unet: nn.Module
    blocks: list[str] = field(default_factory=list)
    shares: list[tuple[int, str, np.ndarray, np.ndarray]] = field(default_factory=list)
    timesteps: list[int] = field(default_factory=list)
    image_tokens: dict[str, int] = field(default_factory=dict)
    call: int = -1

    def __post_init__(self) -> None:
        self._modules = [(n, m) for n, m in self.unet.named_modules()
                         if isinstance(m, Attention) and (m.added_kv_proj_dim is not None or m.is_cross_attention)]
        if not self._modules:
            raise ValueError("the UNet has no attention module that reads the context")
        self.blocks = [n for n, _ in self._modules]
        self._handles: list[Any] = []

    def __enter__(self) -> AttentionRecorder:
        self._handles.append(self.unet.register_forward_pre_hook(self._count, with_kwargs=True))
        for name, module in self._modules:
            self._handles.append(module.register_forward_pre_hook(self._hook(name), with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _count(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.call += 1
        t = args[1] if len(args) > 1 else kwargs.get("timestep")
        t = torch.as_tensor(t).reshape(-1)
        self.timesteps.append(int(t[0]) if t.numel() else -1)

    def _hook(self, name: str):
        def hook(module: Attention, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            context = args[1] if len(args) > 1 else kwargs.get("encoder_hidden_states")
            if context is None:
                return
            with torch.no_grad():
                ctx, img = token_shares(module, hidden, context)
            reads_image = module.added_kv_proj_dim is not None and not module.only_cross_attention
            self.image_tokens[name] = int(hidden[0, 0].numel()) if reads_image and hidden.ndim == 4 else (
                int(hidden.shape[1]) if reads_image else 0)
            self.shares.append((self.call, name, ctx, img))
        return hook


def token_shares(attn: Attention, hidden: torch.Tensor, context: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The attention share of each context token, and of the image tokens, in one module.

    Args:
        attn: The attention module (its processor decides gating).
        hidden: Its input, (B, C, H, W) or (B, N, C).
        context: (B, L, D) the context tokens.

    Returns:
        ``(float64 (B, L), float64 (B,))``: each context token's share (mean over heads and
        queries of its softmax weight) and the image tokens' total share.
    """
    from metamri.encoders.gated_attention import _GatedContext, gated_softmax

    proc = attn.processor
    gated = isinstance(proc, _GatedContext)
    b, n_ctx = context.shape[0], context.shape[1]
    x = hidden.view(hidden.shape[0], hidden.shape[1], -1).transpose(1, 2) if hidden.ndim == 4 else hidden
    if gated:
        gate, weights, mask = proc.layout(context)
        if attn.norm_cross is not None:
            context = proc.norm_context(attn, context, weights)
    else:
        gate, mask = None, None
        if attn.norm_cross is not None:
            context = attn.norm_encoder_hidden_states(context)
    if attn.added_kv_proj_dim is not None:  # SimpleCrossAttn: keys = [context; image]
        x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2) if attn.group_norm is not None else x
        query = attn.head_to_batch_dim(attn.to_q(x), out_dim=4)
        key = attn.head_to_batch_dim(attn.add_k_proj(context), out_dim=4)
        if not attn.only_cross_attention:
            key = torch.cat([key, attn.head_to_batch_dim(attn.to_k(x), out_dim=4)], dim=2)
            if mask is not None:
                mask = torch.cat([mask, mask.new_zeros(x.shape[1])])
    else:  # Transformer2D cross-attention: keys = context
        if attn.spatial_norm is not None or attn.norm_q is not None or attn.norm_k is not None:
            raise NotImplementedError("attention recording: spatial_norm / norm_q / norm_k are not supported")
        x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2) if attn.group_norm is not None else x
        query = attn.head_to_batch_dim(attn.to_q(x), out_dim=4)
        key = attn.head_to_batch_dim(attn.to_k(context), out_dim=4)
    scores = (query.float() @ key.float().transpose(-1, -2)) / math.sqrt(query.shape[-1])  # (B, H, N, Lk)
    probs = gated_softmax(scores, mask, gate.float()) if gated else scores.softmax(-1)
    share = probs.mean(dim=(1, 2)).double().cpu().numpy()  # (B, Lk)
    return share[:, :n_ctx], share[:, n_ctx:].sum(-1) if share.shape[1] > n_ctx else np.zeros(b)


def _text_encoder(encoder: Any) -> Any:
    """The encoder's text half (a FusionEncoder's ``text``, or a TextEncoder itself), or None."""
    from metamri.encoders.text import TextEncoder

    if isinstance(encoder, TextEncoder):
        return encoder
    text = getattr(encoder, "text", None)
    return text if isinstance(text, TextEncoder) else None


def token_labels(encoder: Any, meta: Metadata, n_tokens: int) -> list[str]:
    """A label for each of the ``n_tokens`` context tokens the encoder builds for ``meta``.

    Text tokens are labelled by the prompt part their characters fall in
    (:data:`metamri.metadata.prompt.PROMPT_PARTS`, the tokenizer's offset mapping); tokens
    after the text (the concatenated fusion) are ``sep`` then ``field:<name>`` in the
    encoder's field order; an encoder without text names its tokens ``field:<name>``.

    Raises:
        ValueError: The encoder's layout does not account for ``n_tokens`` tokens.
    """
    from metamri.metadata.prompt import PROMPT_PARTS

    text = _text_encoder(encoder)
    labels: list[str] = []
    if text is not None:
        parts = PROMPT_PARTS[text.prompt_style](meta, text.fields, set())
        spans, pos = [], 0
        for i, (name, piece) in enumerate(parts):
            if i:
                pos += 2  # ", "
            spans.append((name, pos, pos + len(piece)))
            pos += len(piece)
        prompt = ", ".join(p for _, p in parts)
        enc = text.tokenizer(prompt, padding="max_length", max_length=text.max_length, truncation=True,
                             return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        specials = {text.tokenizer.bos_token_id: "text:start", text.tokenizer.eos_token_id: "text:end",
                    text.tokenizer.pad_token_id: "text:end"}
        seen_end = False
        for tid, (start, end) in zip(ids, offsets, strict=True):
            if seen_end or (start == end and tid in specials):
                label = "text:end" if seen_end or specials.get(tid) == "text:end" else "text:start"
                seen_end = seen_end or label == "text:end"
            else:
                name = next((f for f, a, z in spans if a <= start < z), None)
                label = f"text:{name}" if name is not None else "text:punctuation"
            labels.append(label)
    extra = n_tokens - len(labels)
    fields = list(getattr(encoder, "fields", ()))
    if text is not None and extra:
        if extra != len(fields) + 1:
            raise ValueError(f"{n_tokens} context tokens: {len(labels)} text tokens and {extra} more, "
                             f"not SEP + {len(fields)} field tokens")
        labels += ["sep", *(f"field:{f}" for f in fields)]
    elif text is None:
        if extra != len(fields):
            raise ValueError(f"{n_tokens} context tokens for {len(fields)} fields")
        labels = [f"field:{f}" for f in fields]
    return labels


def attention_table(recorder: AttentionRecorder, labels: Sequence[str], sample: int = 0) -> pd.DataFrame:
    """One row per (block, call, group): the summed share of the group's tokens.

    Args:
        recorder: A finished recording.
        labels: :func:`token_labels` of the sample's context tokens.
        sample: Which sample of the batch.

    Returns:
        Columns ``block, call, timestep, group, n_tokens, share`` (share in [0, 1]: the sum over
        the group's ``n_tokens`` tokens; a block's groups, with ``image``, sum to 1 per call).
    """
    labels = list(labels)
    groups = list(dict.fromkeys(labels))
    sizes = {g: labels.count(g) for g in groups}
    rows = []
    for call, block, ctx, img in recorder.shares:
        if ctx.shape[1] != len(labels):
            raise ValueError(f"{block}: {ctx.shape[1]} context tokens, {len(labels)} labels")
        t = recorder.timesteps[call] if 0 <= call < len(recorder.timesteps) else -1
        for g in groups:
            share = float(sum(ctx[sample, j] for j, lab in enumerate(labels) if lab == g))
            rows.append({"block": block, "call": call, "timestep": t, "group": g, "n_tokens": sizes[g],
                         "share": share})
        rows.append({"block": block, "call": call, "timestep": t, "group": IMAGE_GROUP,
                     "n_tokens": recorder.image_tokens.get(block, 0),
                     "share": float(img[sample])})
    return pd.DataFrame(rows, columns=["block", "call", "timestep", "group", "n_tokens", "share"])


def plot_attention(table: pd.DataFrame, path: Any, title: str = "") -> Any:
    """Two panels: the mean share *per token* of each group (rows) in each block (columns) over
    every call (a group of many tokens, e.g. the padding, is not favoured by its size), and
    each group's total share (mean over blocks) against the timestep. Writes a PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metamri.utils.io import atomic_output

    ctx = table[table["group"] != IMAGE_GROUP].assign(per_token=lambda d: d["share"] / d["n_tokens"])
    heat = ctx.pivot_table(index="group", columns="block", values="per_token", aggfunc="mean")
    order = list(dict.fromkeys(ctx["group"]))
    heat = heat.loc[order, list(dict.fromkeys(ctx["block"]))]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 0.35 * len(order) + 2.5),
                                   gridspec_kw={"width_ratios": [1.3, 1]})
    im = ax0.imshow(heat.to_numpy(), aspect="auto", cmap="viridis")
    ax0.set_yticks(range(len(order)), order, fontsize=8)
    ax0.set_xticks(range(heat.shape[1]), [b.replace("_blocks.", "").replace(".attentions.", ".a")
                                          for b in heat.columns], rotation=60, ha="right", fontsize=7)
    ax0.set_title("share of attention per token, mean over steps")
    fig.colorbar(im, ax=ax0, fraction=0.04)
    per_t = ctx.groupby(["timestep", "group"], sort=False)["share"].mean().unstack()
    top = per_t.mean().sort_values(ascending=False).index[:8]
    for g in top:
        ax1.plot(per_t.index, per_t[g], label=g)
    ax1.set_xlabel("timestep t")
    ax1.set_ylabel("group's total share (mean over blocks)")
    ax1.invert_xaxis()
    ax1.legend(fontsize=7)
    ax1.set_title("over the sampler's steps (t from T to 0)")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
