"""Models: find and name the weight matrices of any causal LM, load checkpoints,
the builtin presets and their pretraining."""
