"""Training: patch sampling, augmentation and background loading feed the training loop."""
