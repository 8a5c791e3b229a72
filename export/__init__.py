"""Export tools (workstation only): Keras -> TFLite, MTCNN nets, benchmarks. May import TensorFlow."""
