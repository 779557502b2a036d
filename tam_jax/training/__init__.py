"""Training: losses, prompt simulation, train step and optimizer."""
