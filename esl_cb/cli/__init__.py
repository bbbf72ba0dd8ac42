"""The command groups of esl-cb; cli.py (the `esl-cb` command) assembles them."""
