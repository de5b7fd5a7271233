"""Torch-free utilities with one job each: errors, durable files, locks, lengths, memory."""
