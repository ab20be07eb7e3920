"""The operator dashboard's static files (served by ``front/dashboard.py``)."""
