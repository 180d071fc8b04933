"""Classifier-free guidance (Ho & Salimans 2022) around a context-conditioned denoiser.

    eps = eps_u + s * (eps_c - eps_u),   eps_c = eps(x_t, t, c),  eps_u = eps(x_t, t, empty)

s = 0 is the unconditional model (only the unconditional half is run), s = 1 the
conditional model (only the conditional half is run); any other s runs BOTH halves through
the network as ONE batch of 2N (``[x; x]``, ``[t; t]``, ``[ctx_u; ctx_c]``), as diffusers'
pipelines and ContextMRI do.

The paper writes the guided noise as ``eps_c + w (eps_c - eps_u)``; that is this formula
with ``s = 1 + w``.  We use ``s`` throughout (DESIGN.md: s = 0 unconditional, s = 1
conditional), as do ContextMRI's code and its ``--cfg_scale``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``eps_fn(x_t (N, 2, H, W) real, t (N,) int64, context (N, L, D)) -> eps (N, 2, H, W)``."""


class GuidedDenoiser:
    """A denoiser with its conditional and unconditional contexts bound, guided with scale s.

    Args:
        eps_fn: the network, ``eps_fn(x_t, t, context) -> eps``; see :data:`EpsFn`.
        cond_ctx: conditional context (N, L, D), or (1, L, D) shared by the batch; may be
            ``None`` when ``scale == 0``.
        uncond_ctx: unconditional ("empty") context of the same shape; may be ``None`` when
            ``scale == 1``.
        scale: guidance scale s.

    Calling it with ``(x_t (N, 2, H, W), t (N,))`` returns the guided eps (N, 2, H, W) in
    ``x_t``'s dtype.  ``calls`` counts network calls and ``batch_sizes`` records their
    batch sizes (what the tests and benchmark look at).
    """

    def __init__(
        self,
        eps_fn: EpsFn,
        cond_ctx: torch.Tensor | None,
        uncond_ctx: torch.Tensor | None,
        scale: float,
    ) -> None:
        self.eps_fn = eps_fn
        self.scale = float(scale)
        self.cond_ctx = cond_ctx
        self.uncond_ctx = uncond_ctx
        if self.scale != 0.0 and cond_ctx is None:
            raise ValueError(f"guidance scale {self.scale} needs a conditional context; got None")
        if self.scale != 1.0 and uncond_ctx is None:
            raise ValueError(f"guidance scale {self.scale} needs an unconditional context; got None")
        if self.uses_both and cond_ctx.shape[1:] != uncond_ctx.shape[1:]:
            raise ValueError(
                "classifier-free guidance runs both contexts as one batch, so their token "
                f"shapes (L, D) must agree: conditional {tuple(cond_ctx.shape)}, unconditional "
                f"{tuple(uncond_ctx.shape)}. Pad both to the encoder's fixed length."
            )
        self.calls = 0
        self.batch_sizes: list[int] = []

    @property
    def uses_both(self) -> bool:
        """Whether both halves go through the network (s not in {0, 1})."""
        return self.scale not in (0.0, 1.0)

    @staticmethod
    def _expand(ctx: torch.Tensor, n: int, name: str) -> torch.Tensor:
        if ctx.ndim != 3:
            raise ValueError(f"{name} must be (N, L, D); got shape {tuple(ctx.shape)}")
        if ctx.shape[0] == n:
            return ctx
        if ctx.shape[0] == 1:
            return ctx.expand(n, -1, -1)
        raise ValueError(f"{name} has batch {ctx.shape[0]}, but x_t has batch {n}")

    def _run(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.batch_sizes.append(int(x.shape[0]))
        return self.eps_fn(x, t, ctx).to(x.dtype)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = x_t.shape[0]
        if t.ndim != 1 or t.shape[0] != n:
            raise ValueError(f"t must be (N,) = ({n},); got shape {tuple(t.shape)}")
        if self.scale == 1.0:
            return self._run(x_t, t, self._expand(self.cond_ctx, n, "cond_ctx"))
        if self.scale == 0.0:
            return self._run(x_t, t, self._expand(self.uncond_ctx, n, "uncond_ctx"))
        ctx = torch.cat(
            [self._expand(self.uncond_ctx, n, "uncond_ctx"), self._expand(self.cond_ctx, n, "cond_ctx")]
        )
        eps_u, eps_c = self._run(torch.cat([x_t, x_t]), torch.cat([t, t]), ctx).chunk(2)
        return eps_u + self.scale * (eps_c - eps_u)
