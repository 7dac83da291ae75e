"""avemo: audio-visual emotion recognition for edge devices.

The core package is torch-free: version, config dataclasses, label names and
the I/O contract shared by training, export and the runtime.
"""

__version__ = "0.2.0"
