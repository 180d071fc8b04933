"""metamri: metadata-conditioned diffusion priors for MRI reconstruction."""

__version__ = "0.1.0"
