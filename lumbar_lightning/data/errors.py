"""The one exception type that means "the input breaks the data contract" (shown to users as one sentence)."""


class DataContractError(ValueError):
    """Input that cannot be used; the message names the file or row and the rule it breaks."""
