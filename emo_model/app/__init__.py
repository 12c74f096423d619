"""The application layer: the Session (a loaded model with everything around it), the command line and its commands."""
