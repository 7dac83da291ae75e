"""A model folder as the runtime reads it: the manifest (read through accessors, written by one writer) and
its checks. Below the backends: nothing here runs a graph."""
