"""Experiment configs: the typed argument parser and the configs the files in experiments/ return.

`experiments/<name>.py` is what a user launches (`--config experiments/<name>.py:<args>`); it
imports only from here, so it loads by path from any working directory.
"""
