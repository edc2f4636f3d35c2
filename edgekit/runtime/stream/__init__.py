"""The stream runner (`edgekit run-stream`): source -> preprocess -> infer -> postprocess -> sink, one
thread per stage with bounded queues (DESIGN.md section 5). Runtime side: never imports torch."""
