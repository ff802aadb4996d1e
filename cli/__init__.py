"""The `lookalike` command line and what it runs locally: the stack, importer and client."""
