"""TEST DOUBLE of pycuda (``pycuda.driver`` only): see ``driver.py``. On ``sys.path`` via ``tests/fakes``."""

VERSION = (2024, 1)
VERSION_TEXT = "2024.1 (avemo test double)"
