"""deadzone: find the weights of a transformer language model that carry nothing."""

__version__ = "0.1.0"
