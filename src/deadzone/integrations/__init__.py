"""What other trainers import: a ``TrainerCallback`` for Hugging Face ``Trainer`` and TRL."""
