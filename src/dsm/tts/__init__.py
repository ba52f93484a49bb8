"""Text-to-speech: text (whole or streamed) -> entries -> state machine -> audio and word timings.

Entry point: :func:`dsm.load_tts` (:mod:`dsm.tts.model`).
"""
