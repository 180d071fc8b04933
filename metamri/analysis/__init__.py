"""Analyses of trained priors that are not reconstructions.

* :mod:`metamri.analysis.information`: how much the metadata tells the prior at each
  noise level (denoising loss with true, dropped and shuffled metadata), and its plot.
"""

from metamri.analysis.information import (
    COLUMNS,
    CONDITIONS,
    check_timesteps,
    default_timesteps,
    information_curves,
    plot_information,
    volume_derangement,
    write_information,
)

__all__ = [
    "COLUMNS",
    "CONDITIONS",
    "check_timesteps",
    "default_timesteps",
    "information_curves",
    "plot_information",
    "volume_derangement",
    "write_information",
]
