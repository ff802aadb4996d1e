"""Code shared by the API and the workers: settings, images, the model, the index."""
