"""The stack's components, one module each: how it is prepared, started, checked and stopped."""
