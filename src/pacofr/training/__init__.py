"""Training any pretraining objective with Lightning: the module, the non-finite gate, host copies of device
values, FSDP access for monitors, pixels for monitors, and synthetic batches for tests and benchmarks."""
