"""The HTTP API: a thin Flask app that validates, enqueues and answers from its index replica."""
