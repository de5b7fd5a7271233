"""Training: the trainer's components, the process launcher and starting from trained weights."""
