"""Fine-tuning: the training loop, resumable run state, BatchNorm recalibration."""
