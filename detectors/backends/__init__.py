"""Inference backends behind one interface: load an ONNX model's bytes, run a batch."""
