"""Speech-to-text: audio in, words with timestamps out."""
