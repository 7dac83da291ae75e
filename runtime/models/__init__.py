"""A model folder as the runtime reads it: the manifest, its checks, the graphs' numerics and parity."""
