"""From media to model inputs: decoding (PyAV), audio features, clip extraction, sample clips."""
