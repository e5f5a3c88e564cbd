"""Methods: each a short file that reads like its paper's algorithm box."""
