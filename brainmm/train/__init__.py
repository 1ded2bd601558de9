"""Training: the shared loop core (`common`: checkpoints, RNG, DDP, tracked run), the pretrain driver."""
