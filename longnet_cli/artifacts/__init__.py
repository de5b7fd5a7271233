"""What training writes and every stage reads: run directories, checkpoints, the runs listing."""
