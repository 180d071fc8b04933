"""What a metadata-conditioned prior reads, and whether a header agrees with its image.

``python -m metamri.interpret <command> [Hydra overrides]``, one module per command:

* ``attention`` (:mod:`metamri.interpret.attention`): the cross-attention weight each context
  token receives (each metadata field; the text tokens grouped by the field they spell), per
  UNet block and sampler step; a CSV and a PNG (config ``conf/interpret_attention.yaml``).
* ``sweep`` (:mod:`metamri.interpret.sweep`): samples from one seed while one field varies,
  beside the phantom's signal-equation image of the same protocol (``conf/interpret_sweep.yaml``).
* ``consistency`` (:mod:`metamri.interpret.consistency`): ranks candidate values of a field by
  the prior's denoising loss on a slice's image and flags a header whose value ranks poorly
  (``conf/interpret_consistency.yaml``).
"""
