"""avemo.export: ONNX graphs (A, V, A+V) sharing one weight file, FP16, parity checks, manifest."""
