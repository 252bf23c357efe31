"""Data side of training: the shard contract, the shard stream, joint transforms, the data module."""
