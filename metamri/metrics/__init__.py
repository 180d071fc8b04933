"""Image-quality metrics on magnitude slices (fastMRI conventions), LPIPS, and the metric table.

See ``docs/metrics.md`` for the conventions.
"""

from metamri.metrics.image import magnitude, nmse, psnr, psnr_volume, ssim, ssim_volume
from metamri.metrics.lpips import LPIPSMetric, to_lpips_input
from metamri.metrics.table import METRICS, MetricRow, MetricTable

__all__ = [
    "METRICS",
    "LPIPSMetric",
    "MetricRow",
    "MetricTable",
    "magnitude",
    "nmse",
    "psnr",
    "psnr_volume",
    "ssim",
    "ssim_volume",
    "to_lpips_input",
]
