"""An adapter bridge: new-model queries served against an old model's index through a learned map."""
