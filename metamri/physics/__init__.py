"""MR physics: centred FFTs, the multi-coil SENSE operator, sampling masks."""
