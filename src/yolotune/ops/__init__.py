"""Pure tensor operations (no I/O), same code on CPU and GPU."""
