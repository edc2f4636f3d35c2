"""Task code (pure NumPy/OpenCV): decoding raw outputs, NMS, mapping back to frames, drawing."""
