"""Gated reading of appended context tokens: the concatenated fusion's start at the text model.

The concatenated fusion hands the UNet ``[text (T); SEP + fields (E)]``.  Even
with zero values, extra keys change every softmax, so plain concatenation cannot
start at the text-only model.  Here every place where the UNet reads its context
weighs the E appended tokens by one learned gate ``g >= 0`` (a parameter of the
encoder): in one joint softmax the unnormalised weights of the appended keys are
multiplied by g::

    out = (sum_{i in text} e^{s_i} v_i + g sum_{j in E} e^{s_j} v_j)
          / (sum_{i in text} e^{s_i} + g sum_{j in E} e^{s_j})

g = 1 is plain concatenation, g = 0 the text model exactly.  The same weights
(1 on the text, g on E) enter every other statistic taken over the tokens, so
g = 0 reproduces the text model there too:

* cross-attention of ``Transformer2D`` blocks (``AttnProcessor``-style, keys = context);
* ``SimpleCrossAttn`` blocks (``AttnAddedKVProcessor``-style, keys = [context; image
  tokens]; ContextMRI) including their ``group_norm`` over the context tokens;
* the ``TextTimeEmbedding`` attention pooling (``addition_embed_type="text"``,
  ContextMRI), whose class token is the (weighted) mean of the tokens.

Per-token maps (``encoder_hid_proj``, LayerNorms) need no gate.

The attention itself runs through ``scaled_dot_product_attention`` (no attention
matrix over the image tokens is materialised): one call with an additive bias
``b`` on the appended keys and an indicator channel appended to the values gives
the output ``u`` at gate ``e^b`` and the appended keys' share ``beta``; with
``o_E`` the attention over the appended keys alone (E of them, explicit) and
``c = (g e^{-b} - 1) beta``, the exact gated output is ``(u + c o_E) / (1 + c)``
for any b.  ``b = max(log g, -10)`` (detached): for g >= e^-10 that is u itself;
below, and at g = 0, the formula removes the appended keys' share exactly while
keeping ``d out / d g`` (non-zero at g = 0; a gradient through ``log g`` would be
infinite there).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import (
    Attention,
    AttnAddedKVProcessor2_0,
    AttnProcessor2_0,
)
from diffusers.models.embeddings import AttentionPooling
from torch import nn

from metamri.errors import ConfigError

#: Lowest additive bias of the appended keys inside the fused kernel (see the module doc).
BIAS_FLOOR = -10.0


class GateOwner(Protocol):
    """What the processors read at every call: the gate (a scalar tensor >= 0)."""

    def gate_value(self) -> torch.Tensor: ...


def gated_softmax(scores: torch.Tensor, gated: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis with the unnormalised weights of ``gated`` keys times ``gate``.

    Args:
        scores: (..., Lk) logits.
        gated: bool (Lk,), the appended keys.
        gate: scalar tensor >= 0.
    """
    gate = gate.to(scores.dtype)
    with torch.no_grad():  # a shift for stability; the result does not depend on it
        shift = torch.maximum(scores.masked_fill(gated, -math.inf).amax(-1, keepdim=True),
                              scores.masked_fill(~gated, -math.inf).amax(-1, keepdim=True) + gate.log())
    weights = torch.exp(scores - shift)
    weights = torch.where(gated, weights * gate, weights)
    return weights / weights.sum(-1, keepdim=True)


def gated_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, gated: torch.Tensor,
               gate: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention with the appended keys' weights multiplied by ``gate``.

    Args:
        query: (B, H, Lq, d).
        key, value: (B, H, Lk, d) and (B, H, Lk, dv).
        gated: bool (Lk,), True for the appended keys.
        gate: scalar tensor >= 0 (0: as if the appended keys were absent; 1: plain attention).
        attn_mask: Optional additive mask broadcastable to (B, H, Lq, Lk).

    Returns:
        (B, H, Lq, dv), in ``query``'s dtype; scale ``1 / sqrt(d)`` as in
        ``F.scaled_dot_product_attention``.
    """
    b, h, lk, dv = value.shape
    dt = query.dtype
    gate = gate.to(dt)
    gated = gated.to(query.device)
    with torch.no_grad():
        bias_e = torch.clamp(torch.log(gate.detach()), min=BIAS_FLOOR)
    rel_gate = gate * torch.exp(-bias_e)  # g e^{-b}: 1 above the floor
    bias = torch.where(gated, bias_e, torch.zeros((), dtype=dt, device=query.device)).view(1, 1, 1, lk)
    if attn_mask is not None:
        bias = bias + attn_mask
    pad = (-(dv + 1)) % 8  # keep the value width a multiple of 8 for the fused kernels
    indicator = gated.to(dt).view(1, 1, lk, 1).expand(b, h, lk, 1)
    v_aug = torch.cat([value, indicator, value.new_zeros(b, h, lk, pad)], dim=-1)
    out = F.scaled_dot_product_attention(query, key, v_aug, attn_mask=bias, dropout_p=0.0, is_causal=False)
    u, share = out[..., :dv], out[..., dv:dv + 1]
    scores_e = query @ key[:, :, gated].transpose(-1, -2) / math.sqrt(query.shape[-1])
    if attn_mask is not None:
        scores_e = scores_e + attn_mask.expand(*scores_e.shape[:-1], lk)[..., gated]
    o_e = scores_e.softmax(-1, dtype=torch.promote_types(dt, torch.float32)).to(dt) @ value[:, :, gated]
    c = (rel_gate - 1) * share
    return (u + c * o_e) / (1 + c)


def gated_group_norm(x: torch.Tensor, norm: nn.GroupNorm, weights: torch.Tensor) -> torch.Tensor:
    """``norm`` over the channels and tokens of x (B, L, C), each token's share in the group
    statistics weighted by ``weights`` (L,) (``nn.GroupNorm`` when every weight is 1)."""
    b, length, c = x.shape
    g = norm.num_groups
    xg = x.view(b, length, g, c // g)
    w = weights.to(x.dtype).view(1, length, 1, 1)
    n = weights.sum() * (c // g)
    mean = (xg * w).sum(dim=(1, 3), keepdim=True) / n
    var = ((xg - mean).pow(2) * w).sum(dim=(1, 3), keepdim=True) / n
    y = ((xg - mean) * torch.rsqrt(var + norm.eps)).view(b, length, c)
    if norm.affine:
        y = y * norm.weight + norm.bias
    return y


class _GatedContext:
    """Shared part of the processors: the context layout and its token weights."""

    def __init__(self, owner: GateOwner, num_text: int, num_extra: int) -> None:
        self.owner, self.num_text, self.num_extra = owner, int(num_text), int(num_extra)

    def layout(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gate, token weights (L,), gated mask (L,)) for a context (B, L, C)."""
        length = context.shape[1]
        if length != self.num_text + self.num_extra:
            raise ValueError(
                f"the gated concatenation reads contexts of {self.num_text} text + {self.num_extra} "
                f"appended tokens; got {length} tokens"
            )
        gate = self.owner.gate_value().to(device=context.device, dtype=context.dtype)
        gated = torch.arange(length, device=context.device) >= self.num_text
        weights = torch.where(gated, gate, torch.ones((), dtype=context.dtype, device=context.device))
        return gate, weights, gated

    @staticmethod
    def norm_context(attn: Attention, context: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if isinstance(attn.norm_cross, nn.LayerNorm):
            return attn.norm_cross(context)
        if isinstance(attn.norm_cross, nn.GroupNorm):
            return gated_group_norm(context, attn.norm_cross, weights)
        raise TypeError(f"unsupported cross-attention norm {type(attn.norm_cross).__name__}")


class GatedCrossAttnProcessor(_GatedContext):
    """``AttnProcessor2_0`` (cross-attention of ``Transformer2D`` blocks) with gated appended tokens."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        if encoder_hidden_states is None:
            return AttnProcessor2_0()(attn, hidden_states, None, attention_mask, temb)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        gate, weights, gated = self.layout(encoder_hidden_states)
        if attn.norm_cross is not None:
            encoder_hidden_states = self.norm_context(attn, encoder_hidden_states, weights)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = gated_sdpa(query, key, value, gated, gate, attention_mask)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.to(query.dtype)))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class GatedAddedKVProcessor(_GatedContext):
    """``AttnAddedKVProcessor2_0`` (``SimpleCrossAttn`` blocks: keys = [context; image tokens])
    with gated appended context tokens, in the attention and in the context's group norm."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        if encoder_hidden_states is None:
            return AttnAddedKVProcessor2_0()(attn, hidden_states, None, attention_mask)
        residual = hidden_states
        hidden_states = hidden_states.view(hidden_states.shape[0], hidden_states.shape[1], -1).transpose(1, 2)
        batch_size, sequence_length, _ = hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size, out_dim=4)
        gate, weights, gated = self.layout(encoder_hidden_states)
        if attn.norm_cross is not None:
            encoder_hidden_states = self.norm_context(attn, encoder_hidden_states, weights)
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states), out_dim=4)
        ctx_key = attn.head_to_batch_dim(attn.add_k_proj(encoder_hidden_states), out_dim=4)
        ctx_value = attn.head_to_batch_dim(attn.add_v_proj(encoder_hidden_states), out_dim=4)
        if not attn.only_cross_attention:
            key = torch.cat([ctx_key, attn.head_to_batch_dim(attn.to_k(hidden_states), out_dim=4)], dim=2)
            value = torch.cat([ctx_value, attn.head_to_batch_dim(attn.to_v(hidden_states), out_dim=4)], dim=2)
            gated = torch.cat([gated, gated.new_zeros(sequence_length)])
        else:
            key, value = ctx_key, ctx_value
        hidden_states = gated_sdpa(query, key, value, gated, gate, attention_mask)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, residual.shape[1])
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        hidden_states = hidden_states.transpose(-1, -2).reshape(residual.shape)
        return hidden_states + residual


class GatedAttentionPooling(AttentionPooling):
    """diffusers' ``AttentionPooling`` (``TextTimeEmbedding``) with gated appended tokens:
    the class token is their weighted mean, and the pooling attention is gated.

    Installed by switching the class of the UNet's pooling module in place (its
    parameters and state-dict names stay); the gate is read from
    ``_metamri_gate`` = (owner, text tokens, appended tokens), kept outside the
    module tree.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, width) -> (B, width)."""
        owner, num_text, num_extra = self.__dict__["_metamri_gate"]
        gate, weights, gated = _GatedContext(owner, num_text, num_extra).layout(x)
        bs, _, width = x.shape

        def shape(t: torch.Tensor) -> torch.Tensor:
            t = t.view(bs, -1, self.num_heads, self.dim_per_head).transpose(1, 2)
            return t.reshape(bs * self.num_heads, -1, self.dim_per_head).transpose(1, 2)

        mean = (x * weights.view(1, -1, 1)).sum(1, keepdim=True) / weights.sum()
        class_token = mean + self.positional_embedding.to(x.dtype)
        x = torch.cat([class_token, x], dim=1)
        q, k, v = shape(self.q_proj(class_token)), shape(self.k_proj(x)), shape(self.v_proj(x))
        scale = 1 / math.sqrt(math.sqrt(self.dim_per_head))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        keys_gated = torch.cat([gated.new_zeros(1), gated])
        weight = gated_softmax(weight.float(), keys_gated, gate.float()).type(weight.dtype)
        a = torch.einsum("bts,bcs->bct", weight, v)
        return a.reshape(bs, -1, 1).transpose(1, 2)[:, 0, :]


def install_gated_attention(unet: nn.Module, owner: GateOwner, num_text: int, num_extra: int) -> dict[str, int]:
    """Install the gated processors on every part of ``unet`` that reads the context.

    Args:
        unet: A diffusers ``UNet2DConditionModel``.
        owner: Holds the gate (``gate_value()``); referenced, not registered as a submodule.
        num_text: Text tokens at the start of the context.
        num_extra: Appended tokens at its end (SEP + fields).

    Returns:
        How many of each were installed: ``{"cross_attention": n, "added_kv": n, "pooling": n}``.

    Raises:
        ConfigError: The UNet reads the context somewhere this does not cover
            (another ``addition_embed_type``), or nowhere.
    """
    counts = {"cross_attention": 0, "added_kv": 0, "pooling": 0}
    addition = getattr(unet.config, "addition_embed_type", None)
    if addition not in (None, "text"):
        raise ConfigError("encoder.mode", "concat",
                          f"the UNet's addition_embed_type {addition!r} reads the context in a way the "
                          "gated concatenation does not cover", hint="use the additive fusion")
    for module in unet.modules():
        if not isinstance(module, Attention):
            continue
        if module.added_kv_proj_dim is not None:
            module.set_processor(GatedAddedKVProcessor(owner, num_text, num_extra))
            counts["added_kv"] += 1
        elif module.is_cross_attention:
            module.set_processor(GatedCrossAttnProcessor(owner, num_text, num_extra))
            counts["cross_attention"] += 1
    if addition == "text":
        pool = unet.add_embedding.pool
        pool.__class__ = GatedAttentionPooling
        object.__setattr__(pool, "_metamri_gate", (owner, int(num_text), int(num_extra)))
        counts["pooling"] += 1
    if counts["cross_attention"] + counts["added_kv"] == 0:
        raise ConfigError("encoder.mode", "concat", "the UNet has no attention that reads the context")
    return counts
