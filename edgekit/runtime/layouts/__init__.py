"""Output layouts (pure NumPy/OpenCV): each module registers one layout with edgekit.runtime.registry; it
recognises a model's raw outputs, checks them against the card and decodes them into its task's result
(DESIGN.md section 4, ../shared/LAYOUTS.md)."""
