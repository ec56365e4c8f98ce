"""A small Flask app that shows flask_tracking off (run ``python -m example_app.app``)."""
