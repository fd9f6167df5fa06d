"""Training: the flow-matching maths (pure functions), LoRA set-up and the Lightning wiring."""
