"""Benchmark evaluation: readers for the public formats, metrics, task heads and the probe /
fine-tune LightningModule (see docs/datasets.md)."""
