"""av-emotion-edge device runtime: numpy + LiteRT only (never TensorFlow, Keras or mtcnn)."""
__version__ = "0.1.0"
