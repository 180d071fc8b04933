"""Reconstruction: classical baselines (zero-filled, L1-wavelet compressed sensing)."""

from metamri.recon.baselines import compressed_sensing, zero_filled

__all__ = ["compressed_sensing", "zero_filled"]
