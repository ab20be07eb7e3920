"""The waiting room page (served by ``front/queue.py``)."""
