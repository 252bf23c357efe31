"""Data side of training: the shard contract, the shard streams, joint transforms, the data module.

The streams are built in layers, one module each, every layer using only the ones above it:

- ``format``: the ``pacofr-faces/1`` shard contract (keys, labels, manifest);
- ``batch``: the batch schema and the masker type;
- ``transforms``: joint augmentation of a face crop and its label map, and the normalisation;
- ``lanes``: seeding, and which samples each worker of each rank reads in an epoch;
- ``stream_stats``: problem counts and rate-limited warnings about bad data;
- ``shard_reader``: one shard's tar members as header-checked raw samples;
- ``decode``: a raw sample's pixels and label map as uint8 arrays;
- ``batch_builder``: raw samples -> decoded, augmented, collated and masked batch;
- ``streams``: the train and validation IterableDatasets;
- ``datamodule``: the streams wired into Lightning, with exact resume.
"""
