"""Lightning callbacks the engine adds to every fit (a user adds more under ``callbacks:`` in the config)."""
