"""Frames -> faces (MTCNN cascade on TFLite nets) -> key faces. numpy + OpenCV + PyAV + LiteRT only."""
