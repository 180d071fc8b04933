"""Image panels for logging: ground truth | zero-filled | reconstruction | error | std map.

All tiles are magnitudes scaled by the ground truth's maximum and clipped to [0, 1];
the error tile is ``| |x| - |x_gt| |`` scaled the same way times ``error_gain``
(default 5, so a 20 % error is white); the std tile is the ensemble's magnitude std,
same scale and gain (zeros for K = 1).
"""

from __future__ import annotations

import numpy as np

from metamri.evaluation.reconstructor import SliceResult


def make_panel(result: SliceResult, method: str, error_gain: float = 5.0) -> np.ndarray:
    """One row of tiles for ``method``.

    Returns:
        float32 (H, 5 W) in [0, 1]: ground truth, zero-filled, reconstruction, error, std.
    """
    gt = np.abs(result.images["ground_truth"])
    ref = float(gt.max()) or 1.0
    recon = np.abs(result.images[method])
    std = result.std if (method == "diffusion" and result.std is not None) else np.zeros_like(gt)
    tiles = [gt / ref, np.abs(result.images["zero_filled"]) / ref, recon / ref,
             error_gain * np.abs(recon - gt) / ref, error_gain * std / ref]
    return np.clip(np.concatenate(tiles, axis=1), 0.0, 1.0).astype(np.float32)


def to_uint8(panel: np.ndarray) -> np.ndarray:
    """A [0, 1] float panel as uint8 0..255 (image loggers read float arrays as 0..255 values,
    which would make a [0, 1] panel black)."""
    return np.round(255.0 * np.clip(panel, 0.0, 1.0)).astype(np.uint8)


def panel_caption(result: SliceResult, method: str) -> str:
    """``"fname slice s [frame f]: gt | zero-filled | <method> | error x5 | std x5"``."""
    k = result.key
    where = f"{k.fname} slice {k.slice}" + ("" if k.frame is None else f" frame {k.frame}")
    return f"{where}: ground truth | zero-filled | {method} | error x5 | std x5"
