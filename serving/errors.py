class LaunchError(RuntimeError):
    """A vLLM server did not come up (or could not be started); the message carries its log tail."""
