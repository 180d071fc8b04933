"""Small shared utilities (Hydra glue, atomic files, seeding)."""
