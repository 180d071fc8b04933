"""Reconstruction and evaluation: one slice at a time, sharded over processes, logged.

* :mod:`.builder` -- ``build_reconstructor`` (= ``Reconstructor.from_config``): the ``reconstruction`` config group -> ``Reconstructor``
* :mod:`.reconstructor` -- ``Reconstructor``: mask -> y = A x -> zero-filled / CS / diffusion -> ``SliceResult``
* :mod:`.sharding` -- ``shard_indices`` (``range(rank, n, world)``), gathering and merging metric rows
* :mod:`.run` -- ``evaluate_split`` (shard, reconstruct, score, gather) and the CSV / markdown outputs
* :mod:`.panels` -- ground truth | zero-filled | reconstruction | error | std image panels
* :mod:`.callback` -- ``ReconstructionCallback`` for Lightning (validation and test)
"""

from metamri.evaluation.builder import build_reconstructor, build_sampler
from metamri.evaluation.callback import ReconstructionCallback
from metamri.evaluation.panels import make_panel
from metamri.evaluation.reconstructor import METHODS, Reconstructor, SliceKey, SliceResult
from metamri.evaluation.run import (
    SplitEvaluation,
    evaluate_split,
    setup_lines,
    summary_markdown,
    write_outputs,
)
from metamri.evaluation.sharding import gather_rows, merge_rows, shard_indices

__all__ = [
    "METHODS",
    "ReconstructionCallback",
    "Reconstructor",
    "SliceKey",
    "SliceResult",
    "SplitEvaluation",
    "build_reconstructor",
    "build_sampler",
    "evaluate_split",
    "gather_rows",
    "make_panel",
    "merge_rows",
    "setup_lines",
    "shard_indices",
    "summary_markdown",
    "write_outputs",
]
