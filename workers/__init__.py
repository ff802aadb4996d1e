"""Celery workers: the embed queue's model workers and the single index writer."""
