"""Procedural synthetic faces with exact parsing maps, landmarks, pose, lighting and occluders.

The embedded default dataset: every pixel's colour is derived from its label in the parsing map,
so the map is exact by construction. Entry points: :func:`data_prep.synth.generate.render_sample`
(one face as arrays + meta) and :func:`data_prep.synth.generate.write_dataset` (shards + manifest);
the ``pacofr-prep synth`` command lives in :mod:`data_prep.synth.command`.
"""

# 2: per-sample random streams from Python's Mersenne Twister (same distributions, other draws),
#    uint8 colouring with a shared grain tile, run-length PNG label maps; ~2.2x faster than 1.
GENERATOR_VERSION = "2"
