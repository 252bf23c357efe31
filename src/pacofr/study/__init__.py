"""Method studies: arms x seeds -> pretraining -> frozen-feature probes -> one table (docs/study.md)."""
