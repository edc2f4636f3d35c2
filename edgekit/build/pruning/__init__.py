"""Structured pruning (build side): the Torch-Pruning mechanics, target search and the report behind
`edgekit prune` (edgekit/build/prune.py)."""
