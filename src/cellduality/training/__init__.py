"""Training stages (SFT, GRPO) on TRL, with the CPU-safe defaults and resume logic they share."""
