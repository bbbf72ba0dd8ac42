"""The real FreeSWITCH and SIPp for the tests marked `freeswitch` (see switch.py)."""
