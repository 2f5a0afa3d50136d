"""Datasets, few-shot and base/new protocol, and the on-disk feature stores."""
