"""LPIPS (Zhang et al. 2018, AlexNet features) on MRI magnitudes, where it can be loaded.

The ``lpips`` package needs ``torchvision`` (for the AlexNet backbone and its
ImageNet weights, downloaded on first use). Neither is part of the CPU install of
this project, so LPIPS is optional: :meth:`LPIPSMetric.try_create` returns ``None``
and logs ONE warning saying why, and the metric table records ``lpips = None``.

Input convention: both magnitudes are divided by the ground-truth maximum, mapped
to ``[-1, 1]`` (``2 |x| / max|gt| - 1``, clipped, so a prediction brighter than
the ground-truth peak saturates at 1) and repeated to 3 channels, the RGB range
LPIPS was trained on.
"""

from __future__ import annotations

import logging
import os
from os import PathLike

import numpy as np
import torch

from metamri.metrics.image import magnitude

log = logging.getLogger(__name__)

_WARNED = False


def _warn_once(message: str) -> None:
    global _WARNED
    if not _WARNED:
        log.warning(message)
        _WARNED = True


def to_lpips_input(image, reference_max: float) -> torch.Tensor:
    """Magnitude ``(H, W)`` (or ``(N, H, W)``) -> float32 ``(N, 3, H, W)`` in ``[-1, 1]``.

    ``2 * clip(|image| / reference_max, 0, 1) - 1``, repeated over 3 channels.

    Args:
        image: real or complex NumPy array or tensor; its magnitude is used.
        reference_max: the ground-truth maximum magnitude (maps to +1; 0 maps to -1).
    """
    if not reference_max > 0:
        raise ValueError(f"reference_max must be positive, got {reference_max}")
    mag = torch.from_numpy(magnitude(image))
    if mag.ndim == 2:
        mag = mag.unsqueeze(0)
    if mag.ndim != 3:
        raise ValueError(f"expected (H, W) or (N, H, W), got shape {tuple(mag.shape)}")
    scaled = 2.0 * (mag / reference_max).clamp(0.0, 1.0) - 1.0
    return scaled.unsqueeze(1).repeat(1, 3, 1, 1).to(torch.float32)


class LPIPSMetric:
    """LPIPS distance between magnitude slices (lower is better).

    Build it with :meth:`try_create`, which returns ``None`` where LPIPS cannot be
    loaded. Calling it compares one ground-truth/prediction pair.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()

    @classmethod
    def try_create(
        cls, weights_path: str | PathLike[str] | None = None, net: str = "alex"
    ) -> LPIPSMetric | None:
        """An LPIPS metric, or ``None`` (with one logged warning) if it cannot be loaded.

        Args:
            weights_path: the LPIPS linear-layer weights (``lpips``'s
                ``weights/v0.1/alex.pth``); ``None``: the copy inside the package.
                The AlexNet backbone comes from torchvision's cache (``$TORCH_HOME``).
            net: backbone, ``"alex"`` (the convention of this project).
        """
        if weights_path is not None and not os.path.isfile(weights_path):
            _warn_once(f"LPIPS unavailable: weights file {os.fspath(weights_path)!r} does not exist; "
                       "LPIPS will be reported as empty (None).")
            return None
        try:
            import lpips  # optional dependency
        except Exception as err:  # ImportError, or torchvision failing to load
            _warn_once(
                f"LPIPS unavailable: the optional `lpips` package cannot be imported "
                f"({type(err).__name__}: {err}). It needs torchvision, which is not part of "
                "the CPU install (`pip install metamri[lpips]` where a matching torchvision "
                "exists); LPIPS will be reported as empty (None)."
            )
            return None
        try:
            kwargs = {"net": net, "verbose": False}
            if weights_path is not None:
                kwargs["model_path"] = os.fspath(weights_path)
            model = lpips.LPIPS(**kwargs)
        except Exception as err:  # e.g. no network to fetch the AlexNet weights
            _warn_once(
                f"LPIPS unavailable: building lpips.LPIPS(net={net!r}) failed "
                f"({type(err).__name__}: {err}); LPIPS will be reported as empty (None)."
            )
            return None
        return cls(model)

    @torch.no_grad()
    def __call__(self, gt, pred) -> float:
        """LPIPS between magnitudes ``(H, W)``, both scaled by ``max |gt|``."""
        ref = float(np.max(magnitude(gt)))
        a, b = to_lpips_input(gt, ref), to_lpips_input(pred, ref)
        if a.shape != b.shape:
            raise ValueError(f"ground truth {tuple(a.shape)} and prediction {tuple(b.shape)} differ")
        device = next(self.model.parameters()).device
        return float(self.model(a.to(device), b.to(device)).mean())
