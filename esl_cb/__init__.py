"""esl-cb: queued callbacks for FreeSWITCH contact centres."""

__version__ = "0.1.0"
