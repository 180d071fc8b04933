"""Preprocessing, done once and cached: ESPIRiT maps -> MVUE -> centre crop -> / p99 |x|.

* :mod:`~metamri.preprocess.espirit`: coil maps through BART or sigpy (one interface).
* :mod:`~metamri.preprocess.mvue`: coil combination, crop/pad, p99 normalisation, 2 channels.
* :mod:`~metamri.preprocess.cache`: the per-volume HDF5 cache format (read by the data modules).
* :mod:`~metamri.preprocess.pipeline`: volumes and directories -> cache entries.

Command line: ``python -m metamri.preprocess input_dir=... cache_dir=...``.
"""

from metamri.preprocess.cache import (
    CACHE_VERSION,
    VolumeEntry,
    is_up_to_date,
    read_entry,
    write_entry,
)
from metamri.preprocess.espirit import (
    BartEspirit,
    EspiritEstimator,
    EspiritParams,
    SigpyEspirit,
    estimate_maps,
    make_estimator,
    map_agreement,
)
from metamri.preprocess.mvue import (
    crop_or_pad,
    from_two_channel,
    mvue,
    p99_normalize,
    to_two_channel,
)
from metamri.preprocess.pipeline import (
    PreprocessError,
    PreprocessParams,
    PreprocessSummary,
    discover_sources,
    preprocess_directory,
    preprocess_volume,
)

__all__ = [
    "CACHE_VERSION", "BartEspirit", "EspiritEstimator", "EspiritParams", "PreprocessError", "PreprocessParams",
    "PreprocessSummary", "SigpyEspirit", "VolumeEntry", "crop_or_pad", "discover_sources",
    "estimate_maps", "from_two_channel", "is_up_to_date", "make_estimator", "map_agreement", "mvue",
    "p99_normalize", "preprocess_directory", "preprocess_volume", "read_entry", "to_two_channel",
    "write_entry",
]
