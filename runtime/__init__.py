"""avemo.runtime: torch-free inference: features, face crops, backends, Recognizer.

Training imports the feature code from here, so training and serving cannot
drift apart. Nothing in this package may import torch.
"""
