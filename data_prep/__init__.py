"""The preprocessing stage: raw images (or procedural synthetic faces) -> ``pacofr-faces/1`` shards.

Imports ``pacofr.data.format`` (the contract) and nothing else from ``pacofr``.
"""
