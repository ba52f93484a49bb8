"""Training: fine-tuning targets, losses and loops (STT and TTS), voice learning."""
