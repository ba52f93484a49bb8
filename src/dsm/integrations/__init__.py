"""Optional integrations of dsm with voice-agent frameworks (each needs its own extra)."""
