"""Backends behind one interface: ONNX Runtime (CPU default), TensorRT (pycuda), the fp16 reference."""
