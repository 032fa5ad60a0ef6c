"""Fine-tuning stages (#6): SFT and DPO, their dialogue data, trainer callbacks, and the models they write."""
