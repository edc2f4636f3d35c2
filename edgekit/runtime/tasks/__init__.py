"""Tasks (pure NumPy/OpenCV): each module registers one task with edgekit.runtime.registry and owns its
result type, drawing, JSON form, accuracy metric and INT8 agreement measure (DESIGN.md section 4)."""
