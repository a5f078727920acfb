"""Client-level differential privacy: the Gaussian mechanisms (``mechanism.py``), the RDP
accountant (``accounting.py``) and the server-side guard the round protocol calls (``guard.py``)."""
