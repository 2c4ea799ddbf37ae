"""Training: the SFT loop, strategies, the freezer and schedules, memory and tracking."""
