"""Networks (pure ``nn.Module``s, no policy): Mimi, the DSM language model, conditioners."""
