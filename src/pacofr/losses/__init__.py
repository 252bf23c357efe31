"""Training losses: pixel reconstruction, codebook / patch-pixel alignment, spatial consistency."""
