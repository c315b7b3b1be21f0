"""xmodel2: the Xmodel-2 recipe (μP decoder, WSD pretraining, two-stage data) end to end."""

__version__ = "0.1.0"
