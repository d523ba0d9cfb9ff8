"""The model: an ONNX file with its contract, the ONNX Runtime session, format adapters, the registry."""
